"""Notebook 06's figure (was ``afr.experiments.ablations.plot_results``): the component rows and the
sensitivity sweeps."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["ablations_figure"]


def ablations_figure(table: pd.DataFrame, settings,
                     domains: Sequence[str] = ("thermal", "lowquality", "controlled")) -> Figure:
    """Left: the component rows' test AUC per pack (bars, sd over seeds). Then one panel per sweep: test AUC of
    ``domains`` (solid) and the mean validation AUC (dashed, what
    :func:`afr.experiments.ablations.recommended_defaults` reads) against the swept value; the value of
    ``settings`` (the full model's, e.g. ``settings.rank``) marked. ``table``: the grid's tidy table (``group,
    cell, split, domain, metric, seed, value``)."""
    from afr.experiments.settings.ablations import COMPONENTS, GROUPS

    groups = [group for group in GROUPS if group in set(table["group"])]
    if not groups:  # every run flagged by the training-health rules (or none recorded): nothing to draw
        fig, axis = plt.subplots(figsize=(5, 2))
        axis.text(0.5, 0.5, "no run to draw: every run of the grid is flagged\n(afr.experiments.health) or none is "
                  "recorded", ha="center", va="center")
        axis.axis("off")
        return fig
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups) + 1.5, 3.6), squeeze=False)
    colours = dict(zip(domains, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    auc = table[table["metric"] == "auc"]
    for axis, group in zip(axes[0], groups):
        part = auc[auc["group"] == group]
        if group == "component":
            cells = [name for name in COMPONENTS if name in set(part["cell"])]
            width = 0.8 / len(domains)
            lowest = 0.85
            for index, domain in enumerate(domains):
                values = part[(part["split"] == "test") & (part["domain"] == domain)].groupby("cell")["value"]
                means, errors = values.mean().reindex(cells), values.std().reindex(cells).fillna(0)
                lowest = min(lowest, float(np.floor(means.min() * 20) / 20)) if means.notna().any() else lowest
                axis.bar(np.arange(len(cells)) + (index - (len(domains) - 1) / 2) * width, means, width, yerr=errors,
                         capsize=2, color=colours[domain], label=f"test {domain}")
            axis.set_xticks(np.arange(len(cells)), [COMPONENTS[c][0] for c in cells], rotation=35, ha="right",
                            fontsize=7)
            axis.set_ylim(lowest, 1.005)  # 0.85, or lower where a mean is (e.g. cfp_fp on the full profile)
            axis.set_title("components", fontsize=9)
            axis.legend(fontsize=6)
            continue
        for domain in domains:
            values = part[(part["split"] == "test") & (part["domain"] == domain)].groupby("cell")["value"]
            stats = values.agg(["mean", "std"]).sort_index()
            axis.errorbar(stats.index.astype(float), stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                          capsize=2, color=colours[domain], label=f"test {domain}")
        val = part[part["split"] == "val"].groupby(["cell", "seed"])["value"].mean().groupby("cell")
        stats = val.agg(["mean", "std"]).sort_index()
        axis.errorbar(stats.index.astype(float), stats["mean"], yerr=stats["std"].fillna(0), marker="s", capsize=2,
                      color="black", linestyle="--", label="validation (mean)")
        axis.axvline(float(getattr(settings, group)), color="grey", linewidth=0.8, linestyle=":")
        if (group.startswith("lambda") or group == "rank") and len(set(part["cell"])) > 1:  # one value: no log axis
            axis.set_xscale("log")
        ticks = sorted(float(value) for value in set(part["cell"]))
        axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
        axis.minorticks_off()
        axis.set_xlabel(group)
        axis.set_title(f"sensitivity: {group}", fontsize=9)
    axes[0][0].set_ylabel("AUC (mean ± sd over seeds)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return fig
