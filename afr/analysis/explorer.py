"""Interactive exploration of the verification decisions, with a static rendering for batch runs.

:class:`ThresholdExplorer` holds, for every (model, domain), the pairs' distances and the protocol's
decisions. Its static rendering (:meth:`ThresholdExplorer.summary` and :meth:`ThresholdExplorer.plot`: a table
at the protocol thresholds and accuracy / FAR / FRR against one threshold for all pairs) is what every run
shows. :meth:`ThresholdExplorer.widgets` adds ipywidgets -- domain, model, a threshold slider (with a typed
threshold linked to it) showing the rates and the pairs whose decision flips against the protocol's, and two
face pickers showing their similarity under every model.

**When the widgets are built.** :func:`widget_frontend` is a plain capability check: ipywidgets is importable
and the code runs in an IPython kernel (``get_ipython().kernel``, whose comms carry the widgets). JupyterLab,
Notebook, VS Code and Voila show them; a batch executor (papermill, nbconvert, nbval) builds them too and stores
their state (a short text line stands for them where widgets cannot be rendered); outside a kernel (a script,
pytest) the static table is the output.

**The slider's step scales with the distances** (:func:`threshold_step`): squared L2 distances of one model on one
pack can span 0-2 (zero-shot) or sit below 0.1 (DA-LoRA on thermal, protocol threshold ~0.02), so a fixed step
flips a sixth of a pack per key press on one and is needlessly fine on the other. The step is the largest round
value (1, 2 or 5 x 10^k) such that one step moves at most ``max_share`` (1 %) of the pairs' decisions.

**Progress bars** (:func:`answers_input`): an interactive frontend sends each cell with ``allow_stdin=True``
(it can answer ``input()``); batch executors send ``False``. ``progress=None`` in notebook 07 shows tqdm.auto bars
only in the first case, so no frozen bar is ever stored in an executed notebook.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from afr.analysis.decisions import OperatingPoint, ProtocolDecisions, at_threshold, protocol_decisions
from afr.analysis.embeddings import PackEmbedder

__all__ = ["FLIPS_SHOWN", "ThresholdExplorer", "answers_input", "flipped_pairs", "flips_caption", "sweep",
           "threshold_step", "widget_frontend"]

#: how many flipped pairs the explorer's table lists
FLIPS_SHOWN = 15


def _kernel():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return None
    return getattr(get_ipython(), "kernel", None)


def widget_frontend() -> bool:
    """Whether widgets can be shown: ipywidgets importable and the code running in an IPython kernel (whose comms
    carry the widgets to the frontend: JupyterLab, Notebook, VS Code, Voila). False in a script or under pytest."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return _kernel() is not None


def answers_input() -> bool:
    """Whether the running cell came from a frontend that answers ``input()`` (``allow_stdin``: JupyterLab, Notebook,
    VS Code) rather than a batch executor (papermill, nbconvert, nbval, Voila). Decides only whether progress bars are
    drawn (``progress=None``), never whether the widgets are built."""
    return bool(getattr(_kernel(), "_allow_stdin", False))


def threshold_step(distances: np.ndarray, max_share: float = 0.01, max_steps: int = 100_000) -> float:
    """A slider step for thresholds on ``distances``: the largest 1/2/5 x 10^k such that moving the threshold by one
    step changes the decision ``distance < threshold`` of at most ``max_share`` of the pairs (at least one pair).

    Any half-open interval ``[t, t + step)`` then holds at most ``k = max(1, floor(max_share * n))`` distances, because
    ``step`` is at most the narrowest span of ``k + 1`` consecutive distinct distances. Tied distances flip together
    whatever the step; ``max_steps`` keeps the slider usable (the step is at least ``max / max_steps``)."""
    values = np.unique(np.asarray(distances, dtype=np.float64))
    top = float(values[-1]) if len(values) else 1.0
    k = max(1, int(np.floor(max_share * len(np.asarray(distances).ravel()))))
    if len(values) > k:
        span = float(np.min(values[k:] - values[:-k]))
    else:
        span = top
    floor = max(top, 1e-12) / max_steps
    span = max(span, floor)
    exponent = np.floor(np.log10(span))
    for mantissa in (5.0, 2.0, 1.0):
        step = mantissa * 10.0 ** exponent
        if step <= span:
            return float(step)
    return float(10.0 ** exponent)  # pragma: no cover - 1 x 10^floor(log10(span)) <= span always


def _decimals(step: float) -> int:
    return max(3, int(-np.floor(np.log10(step))) + 1)


def flips_caption(n_flips: int, shown: int = FLIPS_SHOWN) -> str:
    """The line above the flips table: how many of the flipped pairs it lists."""
    if n_flips == 0:
        return "no pair flips against the protocol"
    if n_flips <= shown:
        return f"all {n_flips} flipped pair(s)"
    return f"first {shown} of {n_flips} flipped pairs"


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
        if not self.domains:  # no test packs (the embedded benchmark is not built): a note, not an error
            fig, ax = plt.subplots(figsize=(6, 1.5))
            ax.text(0.5, 0.5, "no test packs to explore (notebook 01 builds the embedded benchmark)", ha="center",
                    va="center")
            ax.axis("off")
            return fig
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
    def rates_text(self, model: str, domain: str, threshold: float, shown: int = FLIPS_SHOWN
                   ) -> tuple[str, pd.DataFrame]:
        """What the threshold widget shows: the rates at ``threshold`` against the protocol's, how many pairs flip,
        and the first ``shown`` flipped pairs (the text says "first 15 of N")."""
        decisions = self.decisions(model, domain)
        point = self.at(model, domain, threshold)
        flips = flipped_pairs(decisions, threshold, self.embedder.packs[domain].rows)
        digits = _decimals(threshold_step(decisions.distances))
        text = (f"threshold {threshold:.{digits}f}: accuracy {point.accuracy:.4f}, FAR {point.far:.4f}, "
                f"FRR {point.frr:.4f} (protocol: {decisions.point.accuracy:.4f}); "
                f"{len(flips)} of {len(decisions.distances)} pair(s) flip against the protocol, "
                f"{int(flips['now correct'].sum()) if len(flips) else 0} of them now correct\n"
                f"{flips_caption(len(flips), shown)}")
        return text, flips.head(shown)

    def widgets(self):
        """The ipywidgets explorer (built when :func:`widget_frontend` is True)."""
        import ipywidgets as widgets
        from IPython.display import display

        domain = widgets.Dropdown(options=self.domains, description="domain")
        model = widgets.Dropdown(options=self.models, description="model")
        threshold = widgets.FloatSlider(min=0.0, max=2.0, step=0.001, description="threshold", readout_format=".4f",
                                        continuous_update=False, layout=widgets.Layout(width="60%"))
        typed = widgets.BoundedFloatText(min=0.0, max=2.0, step=0.001, description="type it",
                                         layout=widgets.Layout(width="220px"))
        widgets.link((threshold, "value"), (typed, "value"))
        widgets.link((threshold, "max"), (typed, "max"))
        step_note = widgets.HTML()
        rates = widgets.Output()

        def reset(*_):
            decisions = self.decisions(model.value, domain.value)
            step = threshold_step(decisions.distances)
            threshold.max = float(max(decisions.distances.max() * 1.05, 10 * step))
            threshold.step = typed.step = step
            threshold.readout_format = f".{_decimals(step)}f"
            threshold.value = float(np.median(decisions.fold_thresholds))
            step_note.value = (f"<small>step {step:g}: one step changes at most 1% of the "
                               f"{len(decisions.distances)} pairs' decisions; type any threshold beside it</small>")

        def show(*_):
            text, table = self.rates_text(model.value, domain.value, threshold.value)
            with rates:
                rates.clear_output(wait=True)
                print(text)
                display(table)

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
        return ExplorerView(widgets.VBox([widgets.HTML("<b>Threshold</b>"), widgets.HBox([domain, model]),
                                          widgets.HBox([threshold, typed]), step_note, rates,
                                          widgets.HTML("<b>Two faces</b>"), face_a, face_b, similarity]))


class ExplorerView:
    """The explorer's widgets; where widgets cannot be rendered (a stored notebook on GitHub) one line stands for
    them instead of the widget tree's repr."""

    TEXT = ("[threshold explorer: domain / model pickers, threshold slider and typed threshold, flipped pairs, two-face "
            "similarity -- live widgets in JupyterLab, Notebook or Voila]")

    def __init__(self, box) -> None:
        self.box = box

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = self.TEXT
        return bundle
