"""Notebook 02's figure: zero-shot against LoRA on each test pack, and the per-epoch validation AUC."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["baseline_figure"]


def baseline_figure(test: Mapping[str, Mapping[str, Mapping[str, float]]], history: pd.DataFrame,
                    val_packs: Sequence[str], backbone: str, rank: int, margin: str,
                    test_packs: Sequence[str] | None = None) -> Figure:
    """Left: 10-fold test accuracy (mean ± std, %) of ``test["zero-shot"]`` and ``test["lora"]`` (pack ->
    metrics with ``accuracy_mean`` / ``accuracy_std``) on each of ``test_packs`` (default: the packs of
    ``test["lora"]``). Right: ``history["val/<pack>/auc"]`` against ``history["epoch"] + 1`` for ``val_packs``."""
    names = list(test_packs if test_packs is not None else test["lora"])
    fig, (ax_acc, ax_curve) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.3, 1]})
    x = np.arange(len(names))
    for offset, (label, method) in zip((-0.2, 0.2), (("zero-shot", "zero-shot"), (f"LoRA r={rank}", "lora"))):
        values = [100 * test[method][name]["accuracy_mean"] for name in names]
        errors = [100 * test[method][name]["accuracy_std"] for name in names]
        bars = ax_acc.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=label)
        ax_acc.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax_acc.set_xticks(x, names)
    ax_acc.set_ylabel("test verification accuracy (%)\n10-fold mean ± std")
    ax_acc.set_ylim(50, 106)
    ax_acc.set_title(f"{backbone}: zero-shot vs LoRA + {margin} (test)")
    curves = [name for name in val_packs if f"val/{name}/auc" in history]
    for name in curves:
        scored = history[f"val/{name}/auc"].notna()
        ax_curve.plot(history["epoch"][scored] + 1, history[f"val/{name}/auc"][scored], marker="o", label=name)
    ax_curve.set_xlabel("epoch")
    ax_curve.set_xticks(history["epoch"] + 1)
    ax_curve.set_ylabel("validation AUC")
    ax_curve.set_title("per-epoch validation (held-out identities)")
    if curves:
        ax_curve.legend(fontsize=8)
    else:  # a run without per-epoch validation (eval_every_epoch off): say so instead of failing
        ax_curve.text(0.5, 0.5, "no validation in this run's history\n(eval_every_epoch off)", ha="center",
                      va="center", transform=ax_curve.transAxes)
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="lower left", ncol=2, fontsize=9,
               bbox_to_anchor=(0.07, 0.0))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
