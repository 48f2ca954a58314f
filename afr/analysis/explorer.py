"""Interactive exploration of the verification decisions, with a static rendering for batch runs.

:class:`ThresholdExplorer` holds, for every (model, domain), the pairs' distances and the protocol's
decisions. Its static rendering (:meth:`ThresholdExplorer.summary` and :meth:`ThresholdExplorer.plot`: a table
at the protocol thresholds and accuracy / FAR / FRR against one threshold for all pairs) is what a batch run
(papermill, nbval) stores. :meth:`ThresholdExplorer.widgets` adds ipywidgets -- domain, model, a threshold slider
showing the rates and the pairs whose decision flips against the protocol's, and two face pickers showing their
similarity under every model -- and is built only when a live frontend can show them (:func:`live_frontend`).

**How a live frontend is told from a batch run.** A widget needs a frontend that renders it; a batch executor
has none, and an ipywidgets comm cannot be probed from the kernel. Every batch executor in use here runs cells
with ``allow_stdin=False`` (nbclient, which papermill uses, sets it; nbval sends it with each cell), while
Jupyter Lab, Notebook and VS Code send ``allow_stdin=True``, because they can answer ``input()``. The kernel
keeps that flag of the running request, so :func:`live_frontend` reads it: no parameter needs to change
between an interactive session and ``make test`` / ``make demo``, and outside a kernel it is False.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from afr.analysis.decisions import OperatingPoint, ProtocolDecisions, at_threshold, protocol_decisions
from afr.analysis.embeddings import PackEmbedder

__all__ = ["ThresholdExplorer", "flipped_pairs", "live_frontend", "sweep"]


def live_frontend() -> bool:
    """Whether the code runs in a kernel whose current request came from an interactive frontend (see above)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return False
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    return bool(getattr(kernel, "_allow_stdin", False))


@dataclass
class Sweep:
    """Accuracy, FAR and FRR of one threshold for all pairs, at each of ``thresholds``."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    far: np.ndarray
    frr: np.ndarray


def sweep(distances: np.ndarray, issame: np.ndarray, thresholds: np.ndarray | None = None) -> Sweep:
    """Rates at every threshold (default: 300 steps from 0 to just past the largest distance)."""
    distances = np.asarray(distances, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if thresholds is None:
        thresholds = np.linspace(0.0, float(distances.max()) * 1.02 + 1e-6, 300)
    accept = distances[None, :] < thresholds[:, None]
    accuracy = np.mean(accept == issame[None, :], axis=1)
    far = np.sum(accept & ~issame[None, :], axis=1) / max(int((~issame).sum()), 1)
    frr = np.sum(~accept & issame[None, :], axis=1) / max(int(issame.sum()), 1)
    return Sweep(thresholds, accuracy, far, frr)


def flipped_pairs(decisions: ProtocolDecisions, threshold: float, rows: Sequence[dict] | None = None) -> pd.DataFrame:
    """The pairs whose decision at one ``threshold`` differs from the protocol's (fold thresholds), with files."""
    accept = decisions.distances < threshold
    flipped = np.flatnonzero(accept != decisions.accept)
    table = pd.DataFrame({
        "pair": flipped,
        "same identity": decisions.issame[flipped],
        "distance": decisions.distances[flipped],
        "protocol threshold": decisions.thresholds[flipped],
        "protocol": np.where(decisions.accept[flipped], "accept", "reject"),
        "now": np.where(accept[flipped], "accept", "reject"),
        "now correct": accept[flipped] == decisions.issame[flipped],
    })
    if rows is not None:
        table["file a"] = [rows[2 * pair]["file"] for pair in flipped]
        table["file b"] = [rows[2 * pair + 1]["file"] for pair in flipped]
    return table


class ThresholdExplorer:
    """Decisions of several models on several labelled packs; static summary and plot, optional widgets."""

    def __init__(self, embedder: PackEmbedder, models: Sequence[str], domains: Sequence[str] | None = None) -> None:
        self.embedder = embedder
        self.models = list(models)
        self.domains = list(domains or embedder.packs)
        self._decisions: dict[tuple[str, str], ProtocolDecisions] = {}

    def decisions(self, model: str, domain: str) -> ProtocolDecisions:
        key = (model, domain)
        if key not in self._decisions:
            pack = self.embedder.packs[domain]
            self._decisions[key] = protocol_decisions(self.embedder.image_embeddings(model, domain), pack.issame)
        return self._decisions[key]

    def at(self, model: str, domain: str, threshold: float) -> OperatingPoint:
        """Rates of one threshold for every pair of ``domain``'s pack under ``model``."""
        decisions = self.decisions(model, domain)
        return at_threshold(decisions.distances, decisions.issame, threshold)

    # ------------------------------------------------------------------ static rendering
    def summary(self) -> pd.DataFrame:
        """One row per (domain, model) at the protocol's thresholds: accuracy (= the protocol's), FAR, FRR,
        error counts and the range of the fold thresholds."""
        rows = []
        for domain in self.domains:
            for model in self.models:
                decisions = self.decisions(model, domain)
                point = decisions.point
                rows.append({"domain": domain, "model": model, "accuracy": point.accuracy, "FAR": point.far,
                             "FRR": point.frr, "false accepts": point.false_accepts,
                             "false rejects": point.false_rejects,
                             "threshold min": float(decisions.fold_thresholds.min()),
                             "threshold max": float(decisions.fold_thresholds.max())})
        return pd.DataFrame(rows)

    def plot(self, model: str | None = None):
        """Accuracy, FAR and FRR against one threshold for all pairs, one panel per domain; the protocol's fold
        thresholds are the shaded band."""
        model = model or self.models[0]
        fig, axes = plt.subplots(1, len(self.domains), figsize=(4 * len(self.domains), 3.2), squeeze=False)
        for ax, domain in zip(axes[0], self.domains):
            decisions = self.decisions(model, domain)
            curves = sweep(decisions.distances, decisions.issame)
            ax.plot(curves.thresholds, curves.accuracy, label="accuracy", color="black")
            ax.plot(curves.thresholds, curves.far, label="FAR", color="tab:red")
            ax.plot(curves.thresholds, curves.frr, label="FRR", color="tab:blue")
            ax.axvspan(decisions.fold_thresholds.min(), decisions.fold_thresholds.max() + 1e-3, color="0.85",
                       label="protocol thresholds")
            ax.set_title(f"{domain}: {model}", fontsize=9)
            ax.set_xlabel("threshold (squared L2)")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].legend(fontsize=7, loc="center right")
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------------ widgets
    def widgets(self):
        """The ipywidgets explorer (build it only when :func:`live_frontend` is True)."""
        import ipywidgets as widgets
        from IPython.display import display

        domain = widgets.Dropdown(options=self.domains, description="domain")
        model = widgets.Dropdown(options=self.models, description="model")
        threshold = widgets.FloatSlider(min=0.0, max=2.0, step=0.005, description="threshold", readout_format=".3f",
                                        continuous_update=False)
        rates = widgets.Output()

        def reset(*_):
            decisions = self.decisions(model.value, domain.value)
            threshold.max = float(max(decisions.distances.max() * 1.05, 0.01))
            threshold.value = float(np.median(decisions.fold_thresholds))

        def show(*_):
            decisions = self.decisions(model.value, domain.value)
            point = self.at(model.value, domain.value, threshold.value)
            flips = flipped_pairs(decisions, threshold.value, self.embedder.packs[domain.value].rows)
            with rates:
                rates.clear_output(wait=True)
                print(f"threshold {threshold.value:.3f}: accuracy {point.accuracy:.4f}, FAR {point.far:.4f}, "
                      f"FRR {point.frr:.4f} (protocol: {decisions.point.accuracy:.4f}); "
                      f"{len(flips)} pair(s) flip against the protocol, "
                      f"{int(flips['now correct'].sum()) if len(flips) else 0} of them now correct")
                display(flips.head(15))

        for control in (domain, model):
            control.observe(reset, names="value")
        threshold.observe(show, names="value")
        reset()
        show()

        options = [(f"{d}: {row['file']} ({row['identity']})", (d, j))
                   for d in self.domains for j, row in enumerate(self.embedder.packs[d].chip_rows)]
        face_a = widgets.Dropdown(options=options, description="face A", layout=widgets.Layout(width="95%"))
        face_b = widgets.Dropdown(options=options, index=1, description="face B", layout=widgets.Layout(width="95%"))
        similarity = widgets.Output()

        def compare(*_):
            (da, ja), (db, jb) = face_a.value, face_b.value
            with similarity:
                similarity.clear_output(wait=True)
                fig, axes = plt.subplots(1, 2, figsize=(4, 2))
                for ax, (d, j) in zip(axes, ((da, ja), (db, jb))):
                    ax.imshow(self.embedder.packs[d].chips[j])
                    ax.axis("off")
                plt.show()
                for name in self.models:
                    a = self.embedder.chip_embeddings(name, da)[ja]
                    b = self.embedder.chip_embeddings(name, db)[jb]
                    cosine = float(np.dot(a, b))
                    print(f"{name:<28} cosine {cosine:+.4f}  squared L2 {2 - 2 * cosine:.4f}")

        face_a.observe(compare, names="value")
        face_b.observe(compare, names="value")
        compare()
        return widgets.VBox([widgets.HTML("<b>Threshold</b>"), widgets.HBox([domain, model]), threshold, rates,
                             widgets.HTML("<b>Two faces</b>"), face_a, face_b, similarity])
