"""Notebook 03's figure: test AUC of every method per pack, and the DA-LoRA router's mean gates and confusion
(drawn by notebook 07's own :func:`afr.analysis.plots.gates_figure` and :func:`~afr.analysis.plots.confusion_figure`
on this figure's axes, from the same :func:`afr.analysis.committed.gate_matrices`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from afr.analysis.committed import gate_matrices

__all__ = ["dalora_figure"]


def dalora_figure(table: pd.DataFrame, methods: Sequence[str], gate_records: Sequence[Mapping[str, Any]] = (),
                  domains: Sequence[str] | None = None, gate_method: str = "dalora-classifier") -> Figure:
    """Left: test AUC (mean ± sd over seeds) of ``methods`` on each of ``domains`` (default: the table's) from
    the tidy ``table`` (``method, domain, metric, value``). Middle and right: the mean gate of each expert and the
    share of images whose largest gate is each expert, per test pack, mean (± sd with more than one) over
    ``gate_records`` (run records with a ``gates`` entry: the DA-LoRA classifier runs)."""
    auc = table[table["metric"] == "auc"].groupby(["method", "domain"])["value"].agg(["mean", "std"])
    domains = list(domains if domains is not None else dict.fromkeys(table["domain"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    drawn = set(auc.index.get_level_values("method"))
    if any(method not in drawn for method in methods):  # flagged runs are left out of the table (training health)
        axes[0].set_title("not drawn (flagged runs left out): " + ", ".join(m for m in methods if m not in drawn),
                          fontsize=7)
    methods = [method for method in methods if method in drawn]
    width = 0.8 / max(len(methods), 1)
    for index, method in enumerate(methods):
        points = auc.loc[method].reindex(domains)
        axes[0].bar(np.arange(len(domains)) + (index - len(methods) / 2 + 0.5) * width, points["mean"], width,
                    yerr=points["std"].fillna(0), capsize=2, label=method)
    axes[0].set_xticks(np.arange(len(domains)), domains)
    axes[0].set_ylim(0.8, 1.005)
    axes[0].set_ylabel("test AUC (mean ± sd over seeds)")
    if methods:
        axes[0].legend(fontsize=7, ncol=2)
    from afr.analysis.plots import confusion_figure, gates_figure  # here: afr.analysis.plots imports afr.figures

    records = [record for record in gate_records if "gates" in record]
    if not records:
        for axis in axes[1:]:
            axis.text(0.5, 0.5, "no DA-LoRA classifier run\nrecorded gates", ha="center", va="center")
            axis.axis("off")
    for axis, kind, draw in ((axes[1], "mean", gates_figure), (axes[2], "argmax", confusion_figure)):
        if records:  # notebook 07's gate and confusion figures, drawn on this figure's axes
            mean, sd = gate_matrices(list(records), kind)
            draw(mean, sd if len(records) > 1 else None, gate_method, len(records), ax=axis)
    fig.tight_layout()
    return fig
