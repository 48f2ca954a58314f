"""Notebook 01's figure: a grid of aligned test chips of the embedded benchmark, one row per domain."""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["samples_figure"]


def samples_figure(images: Mapping[str, np.ndarray], seed: int, geometry: str, size: int,
                   columns: int = 8) -> Figure:
    """``columns`` chips drawn at random (``numpy.random.default_rng(seed)``, without replacement, the rows in
    ``images``' order) from each domain's ``(N, H, W, 3)`` uint8 images; the domain names the row."""
    fig, axes = plt.subplots(len(images), columns, figsize=(1.5 * columns, 1.6 * len(images)), squeeze=False)
    rng = np.random.default_rng(seed)
    for row_axes, (domain, chips) in zip(axes, images.items()):
        picks = rng.choice(len(chips), size=min(columns, len(chips)), replace=False)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, index in zip(row_axes, picks):
            ax.imshow(chips[index])
        row_axes[0].set_ylabel(domain, fontsize=11)
    fig.suptitle(f"Embedded benchmark: aligned test chips ({geometry} geometry, {size} px)")
    fig.tight_layout()
    return fig
