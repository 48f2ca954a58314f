"""What the figure modules share: the annotated heatmap (gates, confusion matrices) and atomic saving."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from afr.io import atomic_write_bytes

__all__ = ["figure_bytes", "heatmap", "save_png"]


def figure_bytes(fig: Figure, format: str = "png", dpi: int = 120) -> bytes:
    """``fig`` encoded as ``format`` (tight bounding box; a PDF without its creation date, so the same figure
    gives the same bytes)."""
    options = {"metadata": {"CreationDate": None}} if format == "pdf" else {"dpi": dpi}
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, bbox_inches="tight", **options)
    return buffer.getvalue()


def save_png(fig: Figure, name: str, root: str | Path | None = None, dpi: int = 120) -> Path:
    """Write ``fig`` as ``root/name`` (a PNG; ``root`` defaults to :func:`afr.paths.figures_root`, created if
    needed), atomically; its path."""
    if root is None:
        from afr.paths import figures_root

        root = figures_root()
    Path(root).mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(Path(root) / name, figure_bytes(fig, "png", dpi))


def heatmap(ax, mean: pd.DataFrame, sd: pd.DataFrame | None, title: str, xlabel: str, ylabel: str) -> None:
    """``mean`` (values in [0, 1]) as an annotated heatmap on ``ax`` with a colour bar; ``± sd`` under each
    value when ``sd`` is given. The gates and router confusion of notebooks 03 and 07."""
    image = ax.imshow(mean.to_numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(mean.shape[1]), mean.columns, rotation=30, ha="right")
    ax.set_yticks(range(mean.shape[0]), mean.index)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            value = mean.iat[i, j]
            text = f"{value:.2f}" + (f"\n± {sd.iat[i, j]:.2f}" if sd is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if value < 0.6 else "black")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
