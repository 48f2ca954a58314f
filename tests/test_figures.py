"""Every figure of the notebooks is drawn by afr (``afr.figures`` for 01-06, ``afr.analysis.plots`` for 07, the
paper's architecture figure): each function draws from a hand-made or committed table and returns a Figure with
the expected panels, notebook 03's gate panels are notebook 07's heatmap, and nothing in afr selects a backend."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from afr.analysis.committed import gate_matrices, published_records
from afr.analysis.plots import gates_figure
from afr.figures import (ablations_figure, baseline_figure, crossdomain_figure, dalora_figure, maml_figure,
                         samples_figure, save_png)
from afr.experiments.records import in_grid
from afr.figures.crossdomain import starts_figure
from afr.paths import PROJECT_ROOT

TABLES = PROJECT_ROOT / "results" / "tables"
DOMAINS = ("controlled", "wild", "thermal", "lowquality")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def _grid(table: pd.DataFrame, grid: str) -> pd.DataFrame:
    """The rows of a committed grid (``grid`` holds every grid a shared row belongs to, ``;``-joined)."""
    return table[in_grid(table, grid)]


# ---------------------------------------------------------------------------------------------- 01
def test_samples_figure_draws_a_row_per_domain_from_the_seeded_picks():
    rng = np.random.default_rng(5)
    images = {domain: rng.integers(0, 256, size=(12, 6, 6, 3), dtype=np.uint8) for domain in DOMAINS}
    fig = samples_figure(images, seed=3, geometry="dlib", size=150)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 8
    assert fig._suptitle.get_text() == "Embedded benchmark: aligned test chips (dlib geometry, 150 px)"
    assert [fig.axes[8 * row].get_ylabel() for row in range(4)] == list(DOMAINS)
    picks = np.random.default_rng(3).choice(12, size=8, replace=False)  # the notebook's draw: first row first
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), images["controlled"][picks[1]])


# ---------------------------------------------------------------------------------------------- 02
def test_baseline_figure_compares_zero_shot_with_lora_and_draws_the_validation_curves():
    packs = ("controlled", "thermal")
    test = {method: {pack: {"accuracy_mean": accuracy, "accuracy_std": 0.01} for pack in packs}
            for method, accuracy in (("zero-shot", 0.7), ("lora", 0.9))}
    history = pd.DataFrame({"epoch": [0, 1, 2], "val/controlled/auc": [0.9, 0.95, 0.97],
                            "val/thermal/auc": [0.6, 0.7, 0.8]})
    fig = baseline_figure(test, history, ["controlled", "thermal"], "dlib-resnet29", 8, "cosface")
    assert _titles(fig) == ["dlib-resnet29: zero-shot vs LoRA + cosface (test)",
                            "per-epoch validation (held-out identities)"]
    bars, curves = fig.axes
    assert [label.get_text() for label in bars.get_xticklabels()] == list(packs)
    assert sorted(round(patch.get_height(), 6) for patch in bars.patches) == [70.0, 70.0, 90.0, 90.0]
    assert [line.get_label() for line in curves.get_lines()] == ["controlled", "thermal"]
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["zero-shot", "LoRA r=8"]


def test_baseline_figure_of_a_run_without_per_epoch_validation_says_so():
    """eval_every_epoch off: the history has no validation column; the figure says so instead of a KeyError."""
    test = {method: {"controlled": {"accuracy_mean": 0.8, "accuracy_std": 0.01}} for method in ("zero-shot", "lora")}
    history = pd.DataFrame({"epoch": [0, 1], "train_loss": [41.0, 28.5]})
    fig = baseline_figure(test, history, ["controlled"], "dlib-resnet29", 8, "cosface")
    curves = fig.axes[1]
    assert not curves.get_lines() and "no validation" in curves.texts[0].get_text()


# ---------------------------------------------------------------------------------------------- 03
def test_dalora_figure_from_the_committed_table_draws_its_gates_with_notebook_07s_heatmap():
    table = pd.read_csv(TABLES / "dalora.csv")
    table = table[table["split"] == "test"]
    methods = ["zero-shot", "lora", "lora-matched", "dalora-classifier", "dalora-oracle", "dalora-uniform"]
    records = published_records(PROJECT_ROOT / "results", "dalora-classifier")
    assert len(records) == 3
    fig = dalora_figure(table, methods, records, domains=DOMAINS)
    bars, gates, confusion = fig.axes[:3]
    assert len(fig.axes) == 5  # the two heatmaps' colour bars
    assert [label.get_text() for label in bars.get_xticklabels()] == list(DOMAINS)
    assert len(bars.patches) == len(methods) * len(DOMAINS)
    assert [text.get_text() for text in bars.get_legend().get_texts()] == methods
    # drawn by notebook 07's own gates_figure / confusion_figure, on this figure's axes
    assert gates.get_title() == "dalora-classifier: mean gate per expert (3 seeds)"
    assert confusion.get_title() == "dalora-classifier: router argmax (3 seeds)"
    # the same cells, annotations and labels as notebook 07's gates figure of the same records
    mean, sd = gate_matrices(records, "mean")
    reference = gates_figure(mean, sd, "dalora-classifier", 3).axes[0]
    assert [t.get_text() for t in gates.texts] == [t.get_text() for t in reference.texts]
    assert gates.get_title() == reference.get_title()
    np.testing.assert_allclose(gates.images[0].get_array(), reference.images[0].get_array())
    assert (gates.get_xlabel(), gates.get_ylabel()) == ("expert", "test pack")
    # one seed (the demo): the mean of that run, no "± 0.00"
    one = dalora_figure(table, methods, records[:1], domains=DOMAINS).axes[1]
    assert one.get_title() == "dalora-classifier: mean gate per expert (1 seed)"
    assert not any("±" in t.get_text() for t in one.texts)
    assert float(one.texts[0].get_text()) == pytest.approx(records[0]["gates"]["mean"]["controlled"]["controlled"],
                                                           abs=0.005)


def test_dalora_figure_without_gate_records_says_so():
    table = pd.DataFrame({"method": ["lora"] * 2, "domain": ["controlled", "thermal"], "metric": ["auc"] * 2,
                          "value": [0.99, 0.9], "seed": [0, 0]})
    fig = dalora_figure(table, ["lora"], [{"tag": "a run without gates"}])
    assert [t.get_text() for t in fig.axes[1].texts] == ["no DA-LoRA classifier run\nrecorded gates"]
    assert not fig.axes[1].axison and not fig.axes[2].axison
    assert fig.axes[0].patches[1].get_height() == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------------- 04
def test_maml_figure_draws_one_panel_per_k_from_the_committed_table():
    table = pd.read_csv(TABLES / "maml.csv")
    methods = ("maml", "fomaml", "pooled-lora", "random")
    fig = maml_figure(table, methods, (0, 1, 3, 5, 10, 25), "thermal_und")
    assert _titles(fig) == [f"thermal_und, k = {k} per identity" for k in (1, 2, 4)]
    first = fig.axes[0]
    assert [line.get_label() for line in first.get_lines()] == list(methods)
    assert [label.get_text() for label in first.get_xticklabels()] == ["0", "1", "3", "5", "10", "25"]
    assert first.get_xscale() == "symlog"
    assert first.get_ylabel() == "target test AUC (mean ± sd over seeds)"


# ---------------------------------------------------------------------------------------------- 05
def test_crossdomain_figure_from_the_committed_thermal_grid():
    from afr.experiments.crossdomain import DIRECTIONS, forgetting_table, plot_results

    table = _grid(pd.read_csv(TABLES / "crossdomain.csv"), "crossdomain-thermal")
    settings = SimpleNamespace(shift=DIRECTIONS["visible->thermal"], shots=(1, 2, 4), direction="visible->thermal")
    forgetting = forgetting_table(table, settings)
    fig = crossdomain_figure(table, forgetting, settings)
    left, right = fig.axes
    assert left.get_ylabel() == "thermal test AUC"
    assert [label.get_text() for label in left.get_xticklabels()] == ["0", "1", "2", "4"]
    assert "lora" in [text.get_text() for text in left.get_legend().get_texts()]
    assert right.get_title() == "forgetting (mean over controlled, wild, lowquality)"
    assert [label.get_text() for label in right.get_xticklabels()] == ["k = 1", "k = 2", "k = 4"]
    # the recipe's old name, still imported by notebook 05, draws the same figure
    assert _titles(plot_results(table, forgetting, settings)) == _titles(fig)


def test_validation_curves_figure_from_the_committed_validated_grid():
    """Notebook 05's stage-2 validation curves: a panel per k, a line per method over the scored step counts, and
    one circle per (method, seed) at its chosen step count, on that method's mean curve."""
    import json

    from afr.experiments.crossdomain import validation_table
    from afr.experiments.grids import CommittedGrids
    from afr.figures.crossdomain import validation_curves_figure

    settings = CommittedGrids().crossdomain_validated
    records = {(method, seed): json.loads((PROJECT_ROOT / "results" / "crossdomain" /
                                           f"{settings.for_run(method, seed).tag}.json").read_text())
               for method in settings.adapted_methods() for seed in settings.seeds}
    validation = validation_table(records)
    fig = validation_curves_figure(validation, settings)
    assert _titles(fig) == ["k = 1", "k = 2", "k = 4"]
    for axis, k in zip(fig.axes, (1, 2, 4)):
        assert [label.get_text() for label in axis.get_xticklabels()] == ["0", "1", "3", "5", "10", "25"]
        part = validation[validation["shots"] == k]
        lines = [line for line in axis.get_lines() if line.get_label() in set(part["method"])]
        assert {line.get_label() for line in lines} == set(part["method"])
        circles = sum(len(line.get_xdata()) for line in axis.get_lines() if line.get_marker() == "o")
        assert circles == int(part["chosen"].sum())


def test_starts_figure_for_a_direction_without_target_training_images():
    from afr.experiments.crossdomain import DIRECTIONS

    table = _grid(pd.read_csv(TABLES / "crossdomain.csv"), "crossdomain-outdoor")
    settings = SimpleNamespace(shift=DIRECTIONS["indoor->outdoor"], shots=(1,), direction="indoor->outdoor")
    fig = crossdomain_figure(table, None, settings)
    assert _titles(fig) == ["indoor->outdoor: stage 1 on orl+yale only"]
    assert _titles(starts_figure(table, settings)) == _titles(fig)
    assert [label.get_text() for label in fig.axes[0].get_xticklabels()] == ["wild\n(target)", "controlled\n(source)"]
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()] == ["zero-shot", "pooled-start",
                                                                                 "maml-start"]


# ---------------------------------------------------------------------------------------------- 06
def test_ablations_figure_from_the_committed_table():
    from afr.experiments.ablations import plot_results

    table = pd.read_csv(TABLES / "ablations.csv")
    settings = SimpleNamespace(rank=8, experts=3, lambda_contrastive=0.1, lambda_domain=0.01, inner_steps=3)
    fig = ablations_figure(table, settings)
    assert _titles(fig) == ["components", *(f"sensitivity: {group}" for group in
                                            ("lambda_contrastive", "lambda_domain", "inner_steps", "experts", "rank"))]
    assert fig.axes[0].get_xticklabels()[-1].get_text() == "full DA-LoRA"
    assert fig.axes[-1].get_xscale() == "log"
    assert _titles(plot_results(table, settings)) == _titles(fig)


# ---------------------------------------------------------------------------------------------- saving
def test_save_png_writes_atomically_into_the_figures_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_FIGURES", str(tmp_path / "figures"))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_png(fig, "example.png", dpi=90)
    assert path == tmp_path / "figures" / "example.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["example.png"]  # no temporary file left


# ---------------------------------------------------------------------------------------------- backend
def test_no_library_module_selects_a_matplotlib_backend():
    offenders = [f"{path.relative_to(PROJECT_ROOT)}:{number}"
                 for path in sorted((PROJECT_ROOT / "afr").rglob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"matplotlib\.use\(|switch_backend\(|\bplt\.use\(", line)]
    assert offenders == []


def test_importing_and_drawing_keep_the_callers_backend(tmp_path):
    """A process on the ``svg`` backend imports every figure module, draws and saves the architecture figure and
    a notebook figure, and regenerates the paper as notebook 07's last cell does: its backend is still ``svg``
    (``draw_architecture`` used to switch it to Agg, and the kernel's inline figures vanished after 07's Run All)."""
    script = """
import matplotlib
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
import afr.figures, afr.analysis.plots, afr.analysis.report, afr.analysis.explorer, afr.paper.architecture
import afr.paper.generate
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from afr.paper.architecture import draw_architecture, save_architecture
fig = draw_architecture()
assert not plt.get_fignums(), "the architecture figure is not a pyplot figure"
save_architecture(Path(sys.argv[1]))
history = pd.DataFrame({"epoch": [0, 1], "val/thermal/auc": [0.6, 0.7]})
test = {m: {"thermal": {"accuracy_mean": 0.8, "accuracy_std": 0.0}} for m in ("zero-shot", "lora")}
afr.figures.save_png(afr.figures.baseline_figure(test, history, ["thermal"], "b", 8, "cosface"), "b.png", sys.argv[1])
# notebook 07's last cell: the paper's files regenerated from the committed results (architecture figure included)
scratch = Path(sys.argv[2])
print(afr.paper.generate.regenerate_paper(afr.paths.PROJECT_ROOT / "results", scratch / "figures", scratch / "paper"))
assert (scratch / "figures" / "architecture.png").is_file() and (scratch / "paper" / "numbers.tex").is_file()
print(matplotlib.get_backend())
"""
    environment = {**os.environ, "MPLBACKEND": "svg"}
    scratch = tmp_path.parent / f"{tmp_path.name}-paper"
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(scratch)], capture_output=True, text=True,
                          env=environment, cwd=PROJECT_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "svg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["architecture.pdf", "architecture.png", "b.png"]


def test_drawing_in_this_process_keeps_the_backend():
    before = matplotlib.get_backend()
    from afr.paper.architecture import draw_architecture

    assert isinstance(draw_architecture(), Figure)
    test = {m: {"thermal": {"accuracy_mean": 0.8, "accuracy_std": 0.0}} for m in ("zero-shot", "lora")}
    baseline_figure(test, pd.DataFrame({"epoch": [0], "val/thermal/auc": [0.6]}), ["thermal"], "b", 8, "cosface")
    assert matplotlib.get_backend() == before


def test_crossdomain_figure_says_so_when_every_adapted_run_is_flagged():
    """The demo's adapted runs are all flagged, so its forgetting table is empty: the panel says why, and drawing
    it warns about nothing (a committed notebook output must be clean)."""
    import warnings

    from afr.experiments.crossdomain import DIRECTIONS, forgetting_table

    table = _grid(pd.read_csv(TABLES / "crossdomain.csv"), "crossdomain-thermal")
    table = table[~table["method"].isin(["lora", "dalora", "dalora+maml", "dalora+maml+contrastive",
                                         "dalora+maml+contrastive+semi"])]
    settings = SimpleNamespace(shift=DIRECTIONS["visible->thermal"], shots=(1, 2, 4), direction="visible->thermal")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = crossdomain_figure(table, forgetting_table(table, settings), settings)
    assert [text.get_text() for text in fig.axes[1].texts] == ["no healthy adapted run\n(flagged runs are left out)"]
