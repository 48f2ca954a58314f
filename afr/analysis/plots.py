"""Notebook 07's figures: one function per figure, each returning a matplotlib Figure, and their saving
(notebooks 01-06's are in :mod:`afr.figures`; the gate heatmaps here and notebook 03's are drawn by the same
:func:`afr.figures.common.heatmap`).

Figures are written as ``fig_<name>.pdf`` (for the paper) and ``fig_<name>.png`` (for the README) by
:func:`save_figure`, atomically and without a creation date in the PDF (a re-run with the same inputs gives
the same bytes).
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from afr.analysis.errors import FALSE_ACCEPT, PairError
from afr.analysis.roc import RocCurve
from afr.analysis.tsne import EmbeddedPoints, IdentityCosines
from afr.figures.common import heatmap
from afr.io import atomic_write_bytes

__all__ = ["FIGURE_NAMES", "benchmarks_figure", "confusion_figure", "curves_figure", "errors_figure", "figure_paths",
           "gates_figure", "roc_figure", "saliency_figure", "save_figure", "sensitivity_figure", "tsne_figure"]

#: the figures notebook 07 writes (``fig_<name>.pdf`` / ``.png``); ``benchmarks`` only from full-profile runs
FIGURE_NAMES = ("tsne", "gates", "curves", "sensitivity", "roc", "confusion", "errors", "saliency", "benchmarks")
DOMAIN_COLOURS = {"controlled": "tab:blue", "wild": "tab:green", "thermal": "tab:red", "lowquality": "tab:orange"}


def figure_paths(root: str | Path, name: str) -> tuple[Path, Path]:
    """``(fig_<name>.pdf, fig_<name>.png)`` under ``root``."""
    root = Path(root)
    return root / f"fig_{name}.pdf", root / f"fig_{name}.png"


def save_figure(fig: Figure, name: str, root: str | Path, dpi: int = 110) -> tuple[Path, Path]:
    """Write ``fig`` as ``fig_<name>.pdf`` and ``.png`` under ``root`` (created if needed), atomically."""
    Path(root).mkdir(parents=True, exist_ok=True)
    paths = figure_paths(root, name)
    for path, options in zip(paths, ({"format": "pdf", "metadata": {"CreationDate": None}},
                                     {"format": "png", "dpi": dpi})):
        buffer = io.BytesIO()
        fig.savefig(buffer, bbox_inches="tight", **options)
        atomic_write_bytes(path, buffer.getvalue())
    return paths


# ---------------------------------------------------------------------------------------------- figures
def tsne_figure(panels: Sequence[tuple[str, EmbeddedPoints, np.ndarray, IdentityCosines]]) -> Figure:
    """One row per model: t-SNE coloured by identity (left) and by domain (right), with the cosines beside."""
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 4.6 * len(panels)), squeeze=False)
    for row, (model, points, xy, cosines) in zip(axes, panels):
        identities = {name: k for k, name in enumerate(sorted(set(points.identities)))}
        colours = plt.get_cmap("tab20")(np.array([identities[i] for i in points.identities]) % 20)
        row[0].scatter(xy[:, 0], xy[:, 1], c=colours, s=6, linewidths=0)
        row[0].set_title(f"{model}: by identity ({len(identities)} identities)", fontsize=10)
        for domain in DOMAIN_COLOURS:
            chosen = points.domains == domain
            if chosen.any():
                row[1].scatter(xy[chosen, 0], xy[chosen, 1], s=6, linewidths=0, color=DOMAIN_COLOURS[domain],
                               label=f"{domain} ({int(chosen.sum())})")
        row[1].set_title(f"{model}: by domain", fontsize=10)
        row[1].legend(fontsize=7, markerscale=2, loc="best")
        text = (f"mean same-identity cosine\nacross domains {cosines.cross_domain:.3f}\n"
                f"({cosines.n_cross_identities} ids in >1 domain)\nwithin a domain {cosines.within_domain:.3f}\n"
                f"different ids {cosines.different:.3f}")
        row[1].text(1.03, 0.5, text, transform=row[1].transAxes, fontsize=8, va="center")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def _seeds(seeds: int) -> str:
    return f"{seeds} seed" + ("s" if seeds != 1 else "")


def gates_figure(mean: pd.DataFrame, sd: pd.DataFrame | None, method: str, seeds: int, ax=None) -> Figure:
    """Mean DA-LoRA gate of each expert on each test pack (mean ± sd over seeds; no sd: None). ``ax``: draw on
    that axis of a larger figure (notebook 03's) instead of a figure of its own."""
    fig, ax = plt.subplots(figsize=(5.2, 4)) if ax is None else (None, ax)
    heatmap(ax, mean, sd, f"{method}: mean gate per expert ({_seeds(seeds)})", "expert", "test pack")
    if fig is None:
        return ax.figure
    fig.tight_layout()
    return fig


def confusion_figure(mean: pd.DataFrame, sd: pd.DataFrame | None, method: str, seeds: int, ax=None) -> Figure:
    """The router's confusion matrix: share of each pack's images whose largest gate is each expert (``ax``: as
    :func:`gates_figure`)."""
    fig, ax = plt.subplots(figsize=(5.2, 4)) if ax is None else (None, ax)
    heatmap(ax, mean, sd, f"{method}: router argmax ({_seeds(seeds)})", "expert with the largest gate", "test pack")
    if fig is None:
        return ax.figure
    fig.tight_layout()
    return fig


def _categorical(values: Sequence[int], all_value: int = -1) -> tuple[dict[int, int], list[str]]:
    """Even positions for sorted step / k values (``all_value``, "every image", last) and their tick labels."""
    order = sorted(set(values), key=lambda v: (v == all_value, v))
    return {v: i for i, v in enumerate(order)}, ["all" if v == all_value else str(v) for v in order]


def curves_figure(maml: pd.DataFrame | None, crossdomain: pd.DataFrame | None,
                  full: pd.DataFrame | None = None) -> Figure:
    """Few-shot curves: notebook 04's AUC against adaptation steps per k, notebook 05's thermal AUC against k and,
    when given, notebook 05's full profile (``full``: accuracy on its thermal folder against k, a last panel).

    The x axes are categorical (evenly spaced steps / k; ``k = all``, stored as -1, last)."""
    shots = sorted(maml["shots"].unique()) if maml is not None else []
    panels = len(shots) + 1 + (full is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.4), squeeze=False)
    axes = list(axes[0])
    if full is not None:
        ax = axes.pop()
        rows = full[full["domain"] == "thermal"]
        position, labels = _categorical(rows["shots"].tolist())
        for method, curve in rows.groupby("method"):
            curve = curve.sort_values("shots", key=lambda k: k.map(position))
            ax.errorbar(curve["shots"].map(position), 100 * curve["mean"], yerr=100 * curve["sd"].fillna(0),
                        marker="o", markersize=3, capsize=2, label=method)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title("full profile (05): CASIA-WebFace → thermal folder", fontsize=9)
        ax.set_xlabel("k labelled images per identity (0: before)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=6)
    for ax, k in zip(axes, shots):
        rows = maml[maml["shots"] == k]
        position, labels = _categorical(rows["steps"].tolist())
        for method, curve in rows.groupby("method"):
            curve = curve.sort_values("steps")
            if method == "zero-shot":
                ax.axhline(curve["mean"].iloc[0], color="0.5", linestyle=":", label="zero-shot")
                continue
            ax.errorbar(curve["steps"].map(position), curve["mean"], yerr=curve["sd"].fillna(0), marker="o",
                        markersize=3, capsize=2, label=method)
        ax.set_xticks(range(len(labels)), labels)
        validation = "split" in rows and set(rows["split"]) == {"val"}
        ax.set_title(f"MAML (04): Notre Dame thermal{' validation ids' if validation else ''}, k = {k}", fontsize=9)
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel("validation AUC" if validation else "test AUC")
    if shots:
        axes[0].legend(fontsize=7)
    ax = axes[-1]
    if crossdomain is not None:
        rows = crossdomain[crossdomain["domain"] == "thermal"]
        position, labels = _categorical(rows["shots"].tolist())
        for method, curve in rows.groupby("method"):
            curve = curve.sort_values("shots", key=lambda k: k.map(position))
            style = dict(marker="s", linestyle="none") if curve["shots"].max() == 0 else dict(marker="o")
            ax.errorbar(curve["shots"].map(position), curve["mean"], yerr=curve["sd"].fillna(0), markersize=3,
                        capsize=2, label=method, **style)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title("visible → thermal (05): mixed thermal pack", fontsize=9)
        ax.set_xlabel("k labelled thermal images per identity (0: before adaptation)")
        ax.set_ylabel("test AUC")
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no embedded-profile rows in\ncrossdomain.csv (notebook 05)", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    return fig


def benchmarks_figure(summary: pd.DataFrame) -> Figure:
    """Full profile: verification accuracy per benchmark pack (bars: mean over seeds, whiskers: sd), one bar per
    (backbone, method, CASIA-WebFace identities) of :func:`afr.analysis.committed.benchmark_summary`."""
    rows = summary.assign(row=summary["backbone"] + " " + summary["method"] + " ("
                          + summary["identities"].map(lambda ids: "no training" if ids == "none" else f"{ids} ids")
                          + ")")
    from afr.data.benchmarks import FULL_BENCHMARKS

    packs = sorted(set(rows["domain"]), key=lambda pack: (FULL_BENCHMARKS.index(pack) if pack in FULL_BENCHMARKS
                                                          else len(FULL_BENCHMARKS), pack))
    names = sorted(set(rows["row"]), key=lambda name: ("zero-shot" not in name, name))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(packs) * max(1, len(names) / 2)), 3.4))
    for index, name in enumerate(names):
        bars = rows[rows["row"] == name].set_index("domain").reindex(packs)
        ax.bar(np.arange(len(packs)) + (index - (len(names) - 1) / 2) * width, 100 * bars["mean"], width,
               yerr=100 * bars["sd"].fillna(0), capsize=2, label=f"{name}, {_seeds(int(bars['seeds'].max()))}")
    ax.set_xticks(range(len(packs)), packs)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("full profile (CASIA-WebFace): the five benchmark packs", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def sensitivity_figure(summary: pd.DataFrame | None, domains: Sequence[str] = ("thermal", "lowquality"),
                       recipes: Mapping[str, str] | None = None) -> Figure:
    """Ablation sensitivity (test AUC against each swept setting) and the component rows, or a note when the
    ablations have not been run. ``recipes``: group -> the recipe its runs trained with, named in its panel's title
    (notebook 06 reports a group from its first, unfitted grid until the fitted grid has run it)."""
    if summary is None or summary.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "ablations not run yet\n(results/tables/ablations.csv not found)", ha="center",
                va="center", fontsize=12)
        ax.axis("off")
        return fig
    groups = [g for g in summary["group"].unique() if g != "component"]
    panels = groups + (["component"] if "component" in set(summary["group"]) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, group in zip(axes[0], panels):
        rows = summary[summary["group"] == group]
        if group == "component":
            cells = list(dict.fromkeys(rows["cell"]))
            width = 0.8 / len(domains)
            for offset, domain in enumerate(domains):
                values = rows[rows["domain"] == domain].set_index("cell").reindex(cells)
                ax.bar(np.arange(len(cells)) + offset * width, values["mean"], width, yerr=values["sd"].fillna(0),
                       label=domain, color=DOMAIN_COLOURS.get(domain), capsize=2)
            ax.set_xticks(np.arange(len(cells)) + width * (len(domains) - 1) / 2, cells, rotation=40, ha="right",
                          fontsize=7)
            low = rows[rows["domain"].isin(domains)]["mean"].min()
            ax.set_ylim(max(0.0, low - 0.05), 1.0)
        else:
            for domain in domains:
                curve = rows[rows["domain"] == domain].sort_values("cell_value")
                ax.errorbar(curve["cell_value"], curve["mean"], yerr=curve["sd"].fillna(0), marker="o",
                            markersize=3, capsize=2, label=domain, color=DOMAIN_COLOURS.get(domain))
            if (rows["cell_value"] > 0).all() and rows["cell_value"].max() / rows["cell_value"].min() > 8:
                ax.set_xscale("log")
                ax.minorticks_off()  # the swept values themselves are the ticks
            values = sorted(rows["cell_value"].dropna().unique())
            ax.set_xticks(values, [f"{value:g}" for value in values])
        recipe = f", {recipes[group]}" if recipes and group in recipes else ""
        low, high = int(rows["seeds"].min()), int(rows["seeds"].max())
        seeds = f"{high} seed(s)" if low == high else f"{low}–{high} healthy seeds a point"
        ax.set_title(f"{group} ({seeds}{recipe})", fontsize=9)
        ax.set_ylabel("test AUC")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def roc_figure(curves: Mapping[str, Sequence[RocCurve]]) -> Figure:
    """ROC per test pack (one panel per domain), every model on it, AUC in the legend; log false-accept axis."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3.8 * len(curves), 3.6), squeeze=False)
    for ax, (domain, models) in zip(axes[0], curves.items()):
        for curve in models:
            fpr = np.clip(curve.fpr, 1e-3, 1.0)
            ax.step(fpr, curve.tpr, where="post", label=f"{curve.model} (AUC {curve.auc:.4f})")
        ax.set_xscale("log")
        ax.set_xlim(1e-3 * 0.9, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_title(domain, fontsize=10)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def _pair_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    gap = np.full((a.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def errors_figure(errors: Mapping[str, Sequence[PairError]], images: Mapping[str, Sequence[tuple]]) -> Figure:
    """A gallery: one row per domain, its worst false accepts then its worst false rejects (pair side by side).

    ``images[domain][i]`` is the ``(chip_a, chip_b)`` of ``errors[domain][i]``.
    """
    columns = max((len(e) for e in errors.values()), default=1) or 1
    fig, axes = plt.subplots(len(errors), columns, figsize=(2.6 * columns, 1.9 * len(errors)), squeeze=False)
    for row, (domain, pairs) in zip(axes, errors.items()):
        for ax in row:
            ax.axis("off")
        for ax, error, (a, b) in zip(row, pairs, images[domain]):
            ax.imshow(_pair_image(a, b))
            label = "FA" if error.kind == FALSE_ACCEPT else "FR"
            ax.set_title(f"{domain} {label}: d²={error.distance:.3f} (t={error.threshold:.2f})",
                         fontsize=7, color="tab:red" if error.kind == FALSE_ACCEPT else "tab:blue")
        if not pairs:
            row[0].text(0.0, 0.5, f"{domain}: no errors", fontsize=8, transform=row[0].transAxes)
    fig.tight_layout()
    return fig


def saliency_figure(rows: Sequence[dict], models: Sequence[str]) -> Figure:
    """Grad-CAM overlays: per row a chip, its pair partner, and the chip's map under each model.

    ``rows[i]`` holds ``title``, ``chip``, ``partner`` (uint8 chips) and ``maps`` (model -> ``(H, W)`` map).
    """
    columns = 2 + len(models)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.1 * columns, 2.2 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        ax_row[0].imshow(row["chip"])
        ax_row[0].set_title(row["title"], fontsize=7)
        ax_row[1].imshow(row["partner"])
        ax_row[1].set_title("reference (pair partner)", fontsize=7)
        for ax, model in zip(ax_row[2:], models):
            ax.imshow(row["chip"])
            ax.imshow(row["maps"][model], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"Grad-CAM {model}", fontsize=7)
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    return fig
