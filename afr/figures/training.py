"""Training curves of a grid's runs (notebook 03): did each run fit its training identities, and when did its
validation stop improving? One line per (method, seed), read from the records' per-epoch ``train.history``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["training_curves_figure"]


def training_curves_figure(records: Mapping[tuple[str, int], Mapping[str, Any]]) -> Figure:
    """Left: the training margin loss per epoch as a share of its uniform-logit value (the health rules' reference,
    :func:`afr.experiments.health.uniform_margin_loss`; dashed: 0.9 = not fitted, dotted: 0.5 = fitted well). Right:
    the mean validation AUC over the validation packs per epoch. ``records``: ``{(method, seed): record}``."""
    from afr.experiments.health import FITTED_WELL, NOT_FITTED, run_health

    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = {method: f"C{index}" for index, method in enumerate(dict.fromkeys(m for m, _ in records))}
    for (method, seed), record in records.items():
        history = record["train"]["history"]
        uniform = run_health(record).uniform_reference
        epochs = [entry["epoch"] + 1 for entry in history]
        label = method if seed == min(s for m, s in records if m == method) else None
        if uniform:
            loss_ax.plot(epochs, [entry["train_margin"] / uniform for entry in history], color=colours[method],
                         marker="o", ms=3, label=label)
        aucs = [[value for key, value in entry.items() if key.startswith("val/") and key.endswith("/auc")]
                for entry in history]
        auc_ax.plot(epochs, [sum(values) / len(values) for values in aucs], color=colours[method], marker="o", ms=3,
                    label=label)
    loss_ax.axhline(NOT_FITTED, color="grey", ls="--", lw=1)
    loss_ax.axhline(FITTED_WELL, color="grey", ls=":", lw=1)
    loss_ax.set(xlabel="epoch", ylabel="margin loss / uniform-logit value", title="training fit", ylim=(0, None))
    auc_ax.set(xlabel="epoch", ylabel="mean validation AUC", title="validation (per epoch)")
    loss_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
