"""Notebook 05's figure (was ``afr.experiments.crossdomain.plot_results``): target AUC against k, and the
forgetting on the source packs; for a direction without target training images, the starts' AUC."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["crossdomain_figure", "starts_figure", "validation_curves_figure"]


def validation_curves_figure(validation: pd.DataFrame, settings) -> Figure:
    """Stage 2 on the target's validation identities: validation AUC against adaptation steps, one panel per k,
    a line per method (mean over seeds, band: min-max), each seed's chosen step count marked (a dot on its
    method's line). ``validation``: :func:`afr.experiments.crossdomain.validation_table`."""
    from afr.experiments.settings.crossdomain import shots_label

    shots = sorted(validation["shots"].unique(), key=lambda k: (k < 0, k))
    fig, axes = plt.subplots(1, len(shots), figsize=(max(4.8, 3.6 * len(shots)), 3.6), sharey=True, squeeze=False)
    for axis, k in zip(axes[0], shots):
        part = validation[validation["shots"] == k]
        for method, curve in part.groupby("method", sort=False):
            stats = curve.groupby("steps")["val_auc"].agg(["mean", "min", "max"])
            x = np.arange(len(stats))  # step counts are 0 1 3 5 10 25 ...: evenly spaced positions
            line, = axis.plot(x, stats["mean"], marker=".", label=method)
            axis.fill_between(x, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
            chosen = curve[curve["chosen"]]
            axis.plot([list(stats.index).index(steps) for steps in chosen["steps"]],
                      stats["mean"].reindex(chosen["steps"]).to_numpy(), "o", color=line.get_color(), ms=6,
                      mfc="none")
        axis.set_xticks(range(len(stats)), [str(steps) for steps in stats.index])
        axis.set_xlabel("adaptation steps")
        axis.set_title(f"k = {shots_label(int(k))}", fontsize=9)
    axes[0][0].set_ylabel(f"validation AUC ({settings.shift.validation_pack} val. identities)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("stage 2 on validation (circles: chosen step counts)", fontsize=9)
    fig.tight_layout()
    return fig


def starts_figure(table: pd.DataFrame, settings) -> Figure:
    """A direction without target training images: test AUC of zero-shot and the two starts on its target and
    source packs (bars, error bars: sd over seeds). ``settings``: the run's cross-domain settings (its
    ``direction`` and ``shift``)."""
    from afr.experiments.settings.crossdomain import STARTS

    packs = [*settings.shift.target_packs, *settings.shift.source_packs]
    rows = ["zero-shot", *(f"{start}-start" for start in STARTS)]
    auc = table[(table["metric"] == "auc") & table["domain"].isin(packs) & table["method"].isin(rows)]
    stats = auc.groupby(["method", "domain"])["value"].agg(["mean", "std"])
    fig, axis = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(rows)
    for position, method in enumerate(row for row in rows if row in stats.index.get_level_values(0)):
        points = stats.loc[method].reindex(packs)
        axis.bar(np.arange(len(packs)) + (position - (len(rows) - 1) / 2) * width, points["mean"], width,
                 yerr=points["std"].fillna(0), capsize=3, label=method)
    axis.set_xticks(range(len(packs)), [f"{pack}\n({'target' if pack in settings.shift.target_packs else 'source'})"
                                        for pack in packs])
    low = float(auc["value"].min()) if len(auc) else 0.0
    axis.set_ylim(max(0.0, low - 0.05), 1.0)
    axis.set_ylabel("test AUC")
    axis.set_title(f"{settings.direction}: stage 1 on {'+'.join(settings.shift.source)} only", fontsize=9)
    axis.legend(fontsize=7)
    fig.tight_layout()
    return fig


def crossdomain_figure(table: pd.DataFrame, forgetting: pd.DataFrame, settings) -> Figure:
    """Left: the last target pack's AUC against k, each line from its start at k = 0 (zero-shot: a point);
    ``dalora`` dashed, as it lies on ``lora`` by construction. Right: source-pack accuracy change against the start
    (``forgetting``: :func:`afr.experiments.crossdomain.forgetting_table`), mean over the source packs (0 by
    construction for the DA-LoRA rows). Error bars: sd over seeds. ``settings``: the run's cross-domain settings
    (``shots``, ``shift``); a direction without target training images gets :func:`starts_figure`."""
    from afr.experiments.settings.crossdomain import METHODS, START_OF, shots_label

    if not settings.shift.target:
        return starts_figure(table, settings)
    colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    pack = settings.shift.target_packs[-1]
    auc = table[(table["metric"] == "auc") & (table["domain"] == pack)]
    mean = auc.groupby(["method", "shots"])["value"].agg(["mean", "std"])
    position = {shots: index for index, shots in enumerate((0, *settings.shots))}  # k = all at the right end
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in [m for m in METHODS if m in mean.index.get_level_values(0)]:
        points = mean.loc[method]
        if method in START_OF:
            points = pd.concat([mean.loc[f"{START_OF[method]}-start"], points])
        left.errorbar(points.index.map(position).to_numpy(), points["mean"], yerr=points["std"].fillna(0),
                      marker="o", capsize=3, color=colours[method], linestyle="--" if method == "dalora" else "-",
                      label=method)
    left.set_xticks(list(position.values()), [shots_label(shots) for shots in position])
    left.set_xlabel("k labelled target images per identity (0: before adaptation)")
    left.set_ylabel(f"{pack} test AUC")
    left.legend(fontsize=7)
    change = forgetting[forgetting["shots"] != 0].groupby(["method", "shots", "seed"])["change_vs_start"].mean()
    change = change.groupby(["method", "shots"]).agg(["mean", "std"])
    methods = [m for m in METHODS if m in change.index.get_level_values(0)]
    width = 0.8 / max(len(methods), 1)
    for position, method in enumerate(methods):
        points = change.loc[method]
        x = np.array([settings.shots.index(k) for k in points.index]) + (position - (len(methods) - 1) / 2) * width
        right.bar(x, points["mean"], width, yerr=points["std"].fillna(0), capsize=2, color=colours[method],
                  label=method)
        right.scatter(x, points["mean"], color=colours[method], marker="_", s=80)  # a visible mark for a 0 bar
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(range(len(settings.shots)), [f"k = {shots_label(k)}" for k in settings.shots])
    right.set_ylabel("source accuracy change vs the start")
    right.set_title(f"forgetting (mean over {', '.join(settings.shift.source_packs)})", fontsize=9)
    if methods:
        right.legend(fontsize=7)
    else:  # every adapted run flagged (e.g. the demo's): nothing to draw, and the panel says why
        right.text(0.5, 0.5, "no healthy adapted run\n(flagged runs are left out)", ha="center", va="center",
                   transform=right.transAxes, fontsize=9)
    fig.tight_layout()
    return fig
