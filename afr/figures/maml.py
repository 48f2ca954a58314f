"""Notebook 04's figure: target AUC (test, or validation where the step count is chosen on it) against the adaptation
steps, one panel per k."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["maml_figure"]


def maml_figure(table: pd.DataFrame, methods: Sequence[str], steps: Sequence[int], target: str,
                split: str = "test") -> Figure:
    """Per k (``table["shots"]``): the AUC (mean, shaded ± sd over seeds) of each of ``methods`` against
    ``table["steps"]`` on a symlog axis ticked at ``steps``; ``target`` names the collection in the titles,
    ``split`` (``test`` or ``val``) the identities scored in the axis label."""
    auc = table[table["metric"] == "auc"].groupby(["shots", "method", "steps"])["value"].agg(["mean", "std"])
    shots = sorted(table["shots"].unique())
    fig, axes = plt.subplots(1, len(shots), figsize=(4.6 * len(shots), 3.6), sharey=True, squeeze=False)
    curves = set(auc.index.droplevel("steps"))
    for axis, k in zip(axes[0], shots):
        for method in methods:
            if (k, method) not in curves:
                continue
            rows = auc.loc[(k, method)]
            x = rows.index.to_numpy()
            spread = rows["std"].fillna(0).to_numpy()
            axis.plot(x, rows["mean"], marker="o", label=method)
            axis.fill_between(x, rows["mean"] - spread, rows["mean"] + spread, alpha=0.2)
        axis.set_xscale("symlog", linthresh=1)
        axis.set_xticks(list(steps), [str(s) for s in steps])
        axis.set_xlabel("adaptation steps")
        axis.set_title(f"{target}, k = {k} per identity", fontsize=10)
    scored = {"test": "test", "val": "validation"}[split]
    axes[0][0].set_ylabel(f"target {scored} AUC (mean ± sd over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
