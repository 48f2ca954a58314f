"""Notebook 03's figure: test AUC of every method per pack, and the DA-LoRA router's mean gates and confusion
(drawn by the heatmap notebook 07's :func:`afr.analysis.plots.gates_figure` uses, from the same
:func:`afr.analysis.committed.gate_matrices`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from afr.analysis.committed import gate_matrices
from afr.figures.common import heatmap

__all__ = ["dalora_figure"]


def dalora_figure(table: pd.DataFrame, methods: Sequence[str], gate_records: Sequence[Mapping[str, Any]] = (),
                  domains: Sequence[str] | None = None) -> Figure:
    """Left: test AUC (mean ± sd over seeds) of ``methods`` on each of ``domains`` (default: the table's) from
    the tidy ``table`` (``method, domain, metric, value``). Middle and right: the mean gate of each expert and the
    share of images whose largest gate is each expert, per test pack, mean (± sd with more than one) over
    ``gate_records`` (run records with a ``gates`` entry: the DA-LoRA classifier runs)."""
    auc = table[table["metric"] == "auc"].groupby(["method", "domain"])["value"].agg(["mean", "std"])
    domains = list(domains if domains is not None else dict.fromkeys(table["domain"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        points = auc.loc[method].reindex(domains)
        axes[0].bar(np.arange(len(domains)) + (index - len(methods) / 2 + 0.5) * width, points["mean"], width,
                    yerr=points["std"].fillna(0), capsize=2, label=method)
    axes[0].set_xticks(np.arange(len(domains)), domains)
    axes[0].set_ylim(0.8, 1.005)
    axes[0].set_ylabel("test AUC (mean ± sd over seeds)")
    axes[0].legend(fontsize=7, ncol=2)
    records = [record for record in gate_records if "gates" in record]
    for axis, kind, title in ((axes[1], "mean", "mean gate per true domain"),
                              (axes[2], "argmax", "router confusion (share of images)")):
        if not records:
            axis.text(0.5, 0.5, "no DA-LoRA classifier run\nrecorded gates", ha="center", va="center")
            axis.axis("off")
            continue
        mean, sd = gate_matrices(list(records), kind)
        seeds = f"{len(records)} seed" + ("s" if len(records) > 1 else "")
        heatmap(axis, mean, sd if len(records) > 1 else None, f"{title} ({seeds})", "expert", "test pack")
    fig.tight_layout()
    return fig
