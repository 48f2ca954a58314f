"""Notebook 07's library (afr.analysis) on the real embedded test packs, committed adapters and tiny ViTs."""
from __future__ import annotations

import json
import re
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from afr.analysis.committed import crossdomain_curves, gate_matrices, published_records
from afr.analysis.decisions import at_threshold, protocol_decisions
from afr.analysis.embeddings import PackEmbedder, published_seeds
from afr.analysis.errors import FALSE_ACCEPT, FALSE_REJECT, error_analysis, image_attributes, worst_errors
from afr.analysis import explorer as explorer_module
from afr.analysis.explorer import (ExplorerView, ThresholdExplorer, flipped_pairs, flips_caption, sweep,
                                   threshold_step, widget_frontend)
from afr.analysis.packs import PackMismatchError, labelled_test_pack
from afr.analysis.plots import figure_paths, save_figure, sensitivity_figure
from afr.analysis import report as report_module
from afr.analysis.report import AnalysisSettings, FigureReport, existing_outputs, shown
from afr.analysis.saliency import grad_cam, vit_attention_maps
from afr.analysis.tsne import EmbeddedPoints, collect_points, identity_cosines, tsne_coordinates
from afr.data.embedded import EmbeddedBenchmark, load_embedded
from afr.data.verification import load_pack, write_bin
from afr.eval.verification import evaluate
from afr.models import create_backbone
from afr.paths import PROJECT_ROOT

# the embedded benchmark (data/processed/embedded) is built once per session, before any test here reads it
pytestmark = pytest.mark.usefixtures("embedded_benchmark")

RESULTS = PROJECT_ROOT / "results"


@pytest.fixture(scope="module")
def packs():
    benchmark = load_embedded()
    return {domain: labelled_test_pack(domain, benchmark) for domain in ("wild", "controlled")}


@pytest.fixture(scope="module")
def embedder(packs):
    return PackEmbedder(packs, RESULTS, progress=False)


# ---------------------------------------------------------------------------------------------- packs
def test_labelled_pack_rows_explain_the_pack(packs):
    for domain, pack in packs.items():
        identities = pack.identities
        assert np.array_equal(identities[0::2] == identities[1::2], pack.issame)
        assert {row["domain"] for row in pack.rows} == {domain}
        # every image is the pixels of the chip its row names
        chips = pack.chips
        for index, image in enumerate(pack.pack.images):
            assert np.array_equal(image, chips[pack.chip_of_image[index]])
    assert len(packs["wild"].chip_rows) == 61 and len(packs["controlled"].chip_rows) == 224


def test_labelled_pack_refuses_a_pack_built_otherwise(tmp_path):
    """Pairs chosen under another seed show in the pixels; a flipped issame flag shows in the identities."""
    benchmark = load_embedded()
    benchmark.config.seed = 1
    with pytest.raises(PackMismatchError, match="controlled.bin: image 7 is not the pixels of"):
        labelled_test_pack("controlled", benchmark)
    benchmark = load_embedded()
    original = load_pack(benchmark.bin_path("wild"))
    flags = original.issame.copy()
    flags[5] = not flags[5]
    (tmp_path / "test").mkdir()
    write_bin(tmp_path / "test" / "wild.bin", original.images, flags)
    shutil.copy(benchmark.root / "manifest.csv", tmp_path / "manifest.csv")
    with pytest.raises(PackMismatchError, match="wild.bin: pair 5's issame differs"):
        labelled_test_pack("wild", EmbeddedBenchmark(tmp_path, benchmark.config))


# ---------------------------------------------------------------------------------------------- embeddings / ROC
@pytest.mark.parametrize("adapter", ["lora_seed0", "dalora-classifier_seed0"])
def test_embeddings_reproduce_the_committed_record(embedder, adapter):
    """LoRA (merged) and DA-LoRA (classifier gating, unmerged) on the controlled pack, where both differ from
    zero-shot: the protocol accuracy and AUC of the published run's record."""
    record = json.loads(embedder.choice(adapter).record.read_text())["test"]["controlled"]
    result = evaluate(embedder.image_embeddings(adapter, "controlled"), embedder.packs["controlled"].issame)
    zero_shot = evaluate(embedder.image_embeddings("zero-shot", "controlled"), embedder.packs["controlled"].issame)
    assert result.accuracy_mean != zero_shot.accuracy_mean
    assert result.accuracy_mean == pytest.approx(record["accuracy_mean"], abs=1e-9)
    assert result.auc == pytest.approx(record["auc"], abs=1e-4)


def test_published_seeds_lists_every_seed_of_an_adapters_row(tmp_path):
    for name in ("grid/lora_seed0", "grid/lora_seed10", "grid/lora_seed2", "grid/lora-matched_seed1", "grid/lora_seedx"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "source.json").write_text("{}")
    assert published_seeds("grid/lora_seed2", tmp_path) == ["grid/lora_seed0", "grid/lora_seed2", "grid/lora_seed10"]
    assert published_seeds("grid/lora-matched_seed1", tmp_path) == ["grid/lora-matched_seed1"]
    assert published_seeds("zero-shot", tmp_path) == ["zero-shot"]


def test_the_figures_readings_over_every_published_seed_are_the_records(tmp_path, monkeypatch):
    """Notebook 07 draws seed 0's adapters; seed_spread reads the same figures' numbers off every published seed of
    their rows (notebook 03's fitted grid: seeds 0-2), each seed's AUC its record's, and writes mean and sd."""
    monkeypatch.setenv("AFR_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    report = FigureReport(AnalysisSettings(progress=False, results_dir=str(RESULTS)))
    # two packs (the test's budget) that share identities: the low-quality chips are degraded controlled ones
    report.packs = report.embedder.packs = {domain: report.packs[domain] for domain in ("controlled", "lowquality")}
    table, summary = report.seed_spread()
    assert list(zip(table["row"], table["seed"])) == [("zero-shot", "-"), *((row, seed) for row in (
        "dalora-classifier", "lora") for seed in (0, 1, 2))]
    for row in ("dalora-classifier", "lora"):
        records = [json.loads((RESULTS / "adapters" / "dalora-fitted" / f"{row}_seed{seed}" / "source.json")
                              .read_text())["record"] for seed in (0, 1, 2)]
        aucs = [json.loads((PROJECT_ROOT / record).read_text())["test"]["controlled"]["auc"] for record in records]
        assert report.numbers[f"seeds.{row}.n"] == 3 == summary.loc[row, "seeds"]
        assert report.numbers[f"seeds.{row}.auc_controlled.mean"] == pytest.approx(np.mean(aucs), abs=1e-4)
        assert report.numbers[f"seeds.{row}.auc_controlled.sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-4)
        assert report.numbers[f"seeds.{row}.cosine_cross-domain.mean"] != report.numbers[
            "seeds.zero-shot.cosine_cross-domain.mean"]
    assert "seeds.zero-shot.auc_controlled.sd" not in report.numbers  # one value, no spread


def test_a_reading_off_a_record_must_match_it_within_the_tolerance():
    """The one check behind check_against_records and seed_spread: a value more than the tolerance away from the
    record's fails and names both values and the record."""
    from afr.analysis.report import _assert_matches_record

    _assert_matches_record("lora on thermal", "AUC", 0.9450, 0.9420, "run.json", tolerance=0.005)
    with pytest.raises(AssertionError, match=r"lora on thermal: AUC 0\.9480 here, 0\.9420 in run\.json"):
        _assert_matches_record("lora on thermal", "AUC", 0.9480, 0.9420, "run.json", tolerance=0.005)


# ---------------------------------------------------------------------------------------------- t-SNE
def test_tsne_points_stay_aligned_with_their_labels(embedder, packs):
    points = collect_points(embedder, "zero-shot", ["wild", "controlled"])
    assert len(points) == 61 + 224 == len(points.domains) == len(points.files)
    start = 0
    for domain in ("wild", "controlled"):
        rows = packs[domain].chip_rows
        block = slice(start, start + len(rows))
        assert list(points.identities[block]) == [row["identity"] for row in rows]
        assert set(points.domains[block]) == {domain}
        assert np.allclose(points.embeddings[block], embedder.chip_embeddings("zero-shot", domain))
        start += len(rows)
    xy = tsne_coordinates(points, perplexity=20, seed=0)
    assert xy.shape == (len(points), 2)
    # t-SNE keeps neighbours: most chips' nearest 2-D neighbour is the same person (zero-shot wild/controlled)
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(xy)) * 1e9
    assert np.mean(points.identities[distances.argmin(1)] == points.identities) > 0.8


def test_identity_cosines_count_cross_domain_pairs_only_across_domains():
    points = EmbeddedPoints(np.array([[1, 0, 0], [1, 0, 0], [0.6, 0.8, 0], [0, 0, 1.0]]),
                            np.array(["a", "a", "a", "b"]), np.array(["x", "x", "y", "y"]), np.array(["1", "2", "3", "4"]))
    cosines = identity_cosines(points)
    assert cosines.n_cross_identities == 1 and cosines.n_cross_pairs == 2 and cosines.n_within_pairs == 1
    assert cosines.cross_domain == pytest.approx(0.6) and cosines.within_domain == pytest.approx(1.0)
    assert cosines.different == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- decisions / errors
def test_worst_false_accept_is_the_closest_accepted_different_pair(embedder, packs):
    pack = packs["controlled"]  # DA-LoRA (seed 0) makes 2 false accepts and 6 false rejects here
    decisions = protocol_decisions(embedder.image_embeddings("dalora-classifier_seed0", "controlled"), pack.issame)
    errors = worst_errors(decisions, pack, "dalora-classifier_seed0", n=50)
    accepts = [e for e in errors if e.kind == FALSE_ACCEPT]
    rejects = [e for e in errors if e.kind == FALSE_REJECT]
    assert len(accepts) == decisions.point.false_accepts >= 2 and len(rejects) == decisions.point.false_rejects >= 2
    assert [e.distance for e in accepts] == sorted(e.distance for e in accepts)
    assert [e.distance for e in rejects] == sorted((e.distance for e in rejects), reverse=True)
    different = ~pack.issame
    accepted = different & (decisions.distances < decisions.thresholds)
    assert accepts[0].distance == decisions.distances[accepted].min()
    # here the closest different pair of the whole pack is accepted, so it is the worst false accept
    closest = int(np.flatnonzero(different)[np.argmin(decisions.distances[different])])
    assert accepts[0].pair == closest
    assert accepts[0].row_a["identity"] != accepts[0].row_b["identity"]
    assert rejects[0].distance == decisions.distances[pack.issame & ~decisions.accept].max()
    assert rejects[0].row_a["identity"] == rejects[0].row_b["identity"]
    assert all(error.margin > 0 for error in errors)


def test_error_analysis_counts_match_the_errors(embedder, packs):
    decisions = {domain: protocol_decisions(embedder.image_embeddings("zero-shot", domain), pack.issame)
                 for domain, pack in packs.items()}
    table = error_analysis(decisions, packs)
    rejects = table[(table.domain == "controlled") & (table.kind == FALSE_REJECT) & (table.attribute == "collection")]
    expected = {}
    for pair in decisions["controlled"].false_rejects:
        for row in packs["controlled"].pair(int(pair)):
            expected[row["source"]] = expected.get(row["source"], 0) + 1
    assert dict(zip(rejects.value, rejects.error_images)) == {k: expected.get(k, 0) for k in rejects.value}
    assert rejects.base_share.sum() == pytest.approx(1.0)


def test_image_attributes_read_conditions_from_file_names():
    yale = image_attributes({"file": "yale/subject07.leftlight", "source": "yale", "domain": "lowquality",
                             "detected": "1"})
    assert yale["condition"] == "leftlight" and yale["collection"] == "lowquality<-yale"
    assert yale["downsample"].endswith("px") and yale["jpeg"].endswith("quality")
    thermal = image_attributes({"file": "thermal/und/Pristine/ProbeNPristine/02463d341adjsgreg.tiff",
                                "source": "thermal_und", "domain": "thermal", "detected": "0"})
    assert thermal == {"collection": "thermal_und", "condition": "probeN"}


# ---------------------------------------------------------------------------------------------- explorer
def test_explorer_accuracy_at_the_protocol_equals_evaluate(embedder):
    explorer = ThresholdExplorer(embedder, ["zero-shot", "lora_seed0"], ["wild", "controlled"])
    summary = explorer.summary()
    for _, row in summary.iterrows():
        result = evaluate(embedder.image_embeddings(row["model"], row["domain"]),
                          embedder.packs[row["domain"]].issame)
        assert row["accuracy"] == pytest.approx(result.accuracy_mean, abs=1e-12)
    decisions = explorer.decisions("zero-shot", "controlled")
    threshold = float(np.median(decisions.fold_thresholds))
    point = explorer.at("zero-shot", "controlled", threshold)
    curve = sweep(decisions.distances, decisions.issame, np.array([threshold]))
    assert point.accuracy == pytest.approx(curve.accuracy[0]) and point.far == pytest.approx(curve.far[0])
    flips = flipped_pairs(decisions, 0.0, embedder.packs["controlled"].rows)
    assert len(flips) == int(decisions.accept.sum())  # at threshold 0 every accepted pair flips to reject
    assert (flips["now"] == "reject").all() and set(flips.columns) >= {"file a", "file b"}
    assert not widget_frontend()  # no kernel here: the static summary is the output


def test_at_threshold_uses_the_strict_rule():
    point = at_threshold(np.array([0.1, 0.2]), np.array([True, False]), 0.2)
    assert point.accuracy == 1.0 and point.false_accepts == 0 and point.false_rejects == 0


# ---------------------------------------------------------------------------------------------- saliency
def test_grad_cam_shape_and_dependence_on_the_input(packs):
    backbone = create_backbone("dlib-resnet29")
    chips = packs["wild"].chips[:2]
    with torch.no_grad():
        reference = backbone(torch.tensor(np.stack([packs["wild"].chips[2]] * 2)).permute(0, 3, 1, 2).float() / 255)
    maps = grad_cam(backbone, chips, reference)
    assert maps.shape == (2, 150, 150) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    assert np.abs(maps[0] - maps[1]).mean() > 0.02
    assert all(parameter.grad is None for parameter in backbone.parameters())
    flipped = grad_cam(backbone, [chip[:, ::-1].copy() for chip in chips], reference)
    assert np.abs(flipped[0] - maps[0]).mean() > 0.02


@pytest.mark.parametrize("name,size", [("tiny-dinov2", 28), ("tiny-clip", 32)])
def test_vit_attention_rows_sum_to_one(name, size):
    torch.manual_seed(0)
    backbone = create_backbone(name)
    before = backbone.model.config._attn_implementation
    maps = vit_attention_maps(backbone, torch.rand(2, 3, size, size))
    grid = size // backbone.model.config.patch_size
    assert len(maps.layers) == backbone.model.config.num_hidden_layers
    for layer in maps.layers:
        assert layer.shape == (2, backbone.model.config.num_attention_heads, grid * grid + 1, grid * grid + 1)
        assert np.allclose(layer.sum(-1), 1.0, atol=1e-5)
    assert maps.cls.shape == maps.rollout.shape == (2, grid, grid)
    assert np.allclose(maps.cls, maps.layers[-1].mean(axis=1)[:, 0, 1:].reshape(2, grid, grid))
    # rollout recomputed independently: identity-mixed head means multiplied through the layers, CLS row
    tokens = grid * grid + 1
    rolled = np.broadcast_to(np.eye(tokens), (2, tokens, tokens))
    for layer in maps.layers:
        rolled = (0.5 * layer.mean(axis=1) + 0.5 * np.eye(tokens)) @ rolled
    assert np.allclose(maps.rollout, rolled[:, 0, 1:].reshape(2, grid, grid), atol=1e-5)
    assert backbone.model.config._attn_implementation == before


# ---------------------------------------------------------------------------------------------- committed results
def test_gate_matrices_average_the_published_records():
    records = published_records(RESULTS, "dalora-classifier")
    assert [record["seed"] for record in records] == [0, 1, 2]
    mean, _ = gate_matrices(records, "argmax")
    expected = np.mean([record["gates"]["argmax"]["controlled"]["lowquality"] for record in records])
    assert mean.loc["controlled", "lowquality"] == pytest.approx(expected)
    assert np.allclose(mean.sum(axis=1), 1.0, atol=1e-5)


def test_crossdomain_curves_keep_the_committed_grid_and_direction():
    table = pd.DataFrame({"method": ["lora"] * 4, "domain": ["thermal"] * 4, "metric": ["auc"] * 4,
                          "split": ["test"] * 4, "seed": [0, 1, 0, 0], "value": [0.9, 0.8, 0.1, 0.2],
                          "meta_steps": [60, 60, 10, 60], "shots": [4, 4, 4, 4],
                          "target": [None, "thermal_und+thermal_puj", None, "lowquality"]})
    summary = crossdomain_curves(table)
    assert summary["mean"].tolist() == [pytest.approx(0.85)] and summary["seeds"].tolist() == [2]


def test_crossdomain_curves_of_the_reported_grids_count_each_seed_once():
    """The committed table holds the thermal grids three times (10 fixed steps; the step count chosen on validation
    at 1e-3 and at 3e-4), sharing starts and zero-shot rows: the reported grids' curves have three seeds per row,
    their own values."""
    from afr.experiments.grids import REPORTED_THERMAL_GRIDS, CommittedGrids

    table = pd.read_csv(PROJECT_ROOT / "results" / "tables" / "crossdomain.csv")
    grids = CommittedGrids()
    reported = tuple(grids.crossdomain_grids[name].grid for name in REPORTED_THERMAL_GRIDS)
    assert reported == ("crossdomain-thermal_lr3e4_validated", "crossdomain-thermal_kall_lr3e4_validated")
    summary = crossdomain_curves(table, grids=reported)
    assert set(summary["seeds"]) == {3}
    lora = summary[(summary["method"] == "lora") & (summary["domain"] == "thermal")].set_index("shots")["mean"]
    assert list(lora.index) == [-1, 1, 2, 4]
    rows = table[(table["method"] == "lora") & (table["domain"] == "thermal") & (table["metric"] == "auc")
                 & (table["shots"] == 4) & table["grid"].fillna("").str.contains("crossdomain-thermal_lr3e4_validated")]
    assert lora[4] == pytest.approx(rows["value"].mean()) and len(rows) == 3
    assert crossdomain_curves(table)["seeds"].max() == 9  # without the grid: the three thermal grids' runs, mixed


def test_sensitivity_figure_says_when_ablations_are_missing():
    fig = sensitivity_figure(None)
    assert "ablations not run yet" in " ".join(text.get_text() for text in fig.axes[0].texts)


def test_report_without_overwrite_writes_to_scratch_and_leaves_existing_outputs(tmp_path, monkeypatch):
    """Run as shipped (overwrite=False) where the outputs exist (a clone's committed figures): the run writes to the
    scratch folder and says so; the existing files are not touched. With overwrite it writes in place."""
    monkeypatch.setenv("AFR_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(report_module, "SCRATCH_DIR", tmp_path / "scratch")
    fig = sensitivity_figure(None)
    pdf, png = save_figure(fig, "sensitivity", tmp_path / "figures")
    assert (pdf, png) == figure_paths(tmp_path / "figures", "sensitivity") and pdf.read_bytes()[:4] == b"%PDF"
    assert existing_outputs() == [pdf, png]
    before = {path: path.read_bytes() for path in (pdf, png)}
    report = FigureReport(AnalysisSettings(progress=False))
    assert report.scratch and report.figures_dir == tmp_path / "scratch" / "figures"
    assert report.numbers_file == tmp_path / "scratch" / "results" / "analysis" / "figures.json"
    assert report.paper_dir == tmp_path / "scratch" / "paper_generated"
    assert "kept as they are" in report.destination and "overwrite = True" in report.destination
    assert report.save(sensitivity_figure(None), "sensitivity").endswith(f"written to {tmp_path / 'scratch' / 'figures'}/")
    report.record({"example": 1})
    assert before == {path: path.read_bytes() for path in (pdf, png)}
    assert not (tmp_path / "results").exists()
    in_place = FigureReport(AnalysisSettings(progress=False, overwrite=True))
    assert not in_place.scratch and in_place.figures_dir == tmp_path / "figures" and in_place.paper_dir is None


def test_paths_are_shown_relative_to_the_project_root(tmp_path):
    assert shown(PROJECT_ROOT / "results") == "results"
    assert shown(PROJECT_ROOT / "build" / "07_figures" / "figures") == "build/07_figures/figures"
    assert shown(tmp_path) == str(tmp_path)  # outside the project: absolute


def test_notebook_parameters_mirror_the_settings():
    """07's parameters cell names every AnalysisSettings field with its default (papermill sets them by name)."""
    import dataclasses

    import nbformat

    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "07_figures.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, {}, values)
    fields = {field.name: field.default for field in dataclasses.fields(AnalysisSettings)}
    assert values == fields


# ---------------------------------------------------------------------------------------------- explorer widgets
def _dalora_thermal_like(seed: int = 0) -> np.ndarray:
    """Squared L2 distances shaped like DA-LoRA's on the thermal pack (protocol threshold about 0.02): 300
    same-identity pairs around 0.01, 300 different-identity pairs spread over 0.01-0.15, a few outliers."""
    rng = np.random.default_rng(seed)
    same = rng.gamma(2.0, 0.005, 300)
    different = 0.012 + rng.gamma(1.5, 0.025, 300)
    return np.concatenate([same, different, [0.6, 0.9]])


def _most_flips_per_step(distances: np.ndarray, step: float) -> int:
    """The most decisions ``distance < t`` that one slider step (t -> t + step) changes, over every position."""
    top = distances.max() * 1.05
    positions = np.arange(0.0, top + step, step)
    counts = np.searchsorted(np.sort(distances), positions, side="left")
    return int(np.max(np.diff(counts)))


@pytest.mark.parametrize("source", ["dalora-thermal-like", "zero-shot controlled", "lora_seed0 wild"])
def test_one_slider_step_flips_at_most_one_percent_of_the_pairs(source, embedder):
    if source == "dalora-thermal-like":
        distances = _dalora_thermal_like()
        assert _most_flips_per_step(distances, 0.005) > 0.1 * len(distances)  # the old fixed step: >10 % per press
    else:
        model, domain = source.split()
        distances = ThresholdExplorer(embedder, [model], [domain]).decisions(model, domain).distances
    step = threshold_step(distances)
    limit = max(1, int(0.01 * len(distances)))
    assert _most_flips_per_step(distances, step) <= limit
    assert distances.max() / step < 100_000  # still a usable slider
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-9  # a round step


def test_the_flips_table_says_first_15_of_n(embedder):
    assert flips_caption(0) == "no pair flips against the protocol"
    assert flips_caption(7) == "all 7 flipped pair(s)"
    assert flips_caption(100) == "first 15 of 100 flipped pairs"
    explorer = ThresholdExplorer(embedder, ["zero-shot"], ["controlled"])
    decisions = explorer.decisions("zero-shot", "controlled")
    n_accepted = int(decisions.accept.sum())
    assert n_accepted > 15
    text, table = explorer.rates_text("zero-shot", "controlled", 0.0)  # every accepted pair flips to reject
    assert f"first 15 of {n_accepted} flipped pairs" in text and len(table) == 15


def test_widgets_only_with_a_kernel_and_ipywidgets(monkeypatch):
    import IPython

    assert not widget_frontend()  # pytest: no IPython kernel -> the static table
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=object()))
    assert widget_frontend()  # a kernel (JupyterLab, Voila, nbconvert): widgets, whatever allow_stdin says
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    assert not widget_frontend()
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=SimpleNamespace(_allow_stdin=True)))
    assert explorer_module.answers_input()  # progress bars when a frontend that answers input() runs the cell
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=SimpleNamespace(_allow_stdin=False)))
    assert not explorer_module.answers_input()


def test_widgets_use_the_scaled_step_and_a_typed_threshold(embedder):
    explorer = ThresholdExplorer(embedder, ["zero-shot", "lora_seed0"], ["controlled", "wild"])
    view = explorer.widgets()
    assert isinstance(view, ExplorerView)
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == ExplorerView.TEXT and "application/vnd.jupyter.widget-view+json" in bundle
    slider, typed = view.box.children[2].children
    assert slider.step == threshold_step(explorer.decisions("zero-shot", "controlled").distances)
    typed.value = 0.123
    assert slider.value == pytest.approx(0.123)


def test_committed_notebook_07_is_clean():
    """07 as committed: no papermill-injected cell, no machine paths, no frozen progress bars, readable inline
    figures, the scratch default (a Run All changes no tracked file) and the widget check."""
    import nbformat

    text = (PROJECT_ROOT / "notebooks" / "07_figures.ipynb").read_text()
    notebook = nbformat.reads(text, as_version=4)
    assert not [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    for machine in ("/work/", "/root/", "/tmp/", "/home/", str(PROJECT_ROOT)):
        assert machine not in text, machine
    assert "embedding:" not in text and "it/s]" not in text and "batch/s]" not in text
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    dpi = float(re.search(r'rcParams\["figure.dpi"\]\s*=\s*([0-9.]+)', code).group(1))
    assert dpi >= 90
    assert "overwrite = False" in code and "widget_frontend()" in code and "live_frontend" not in code


@pytest.mark.shared("weights/dlib_resnet29")
def test_the_zero_shot_reference_is_centred_as_the_fitted_adapters_and_mixed_centres_are_refused(tmp_path, monkeypatch):
    """The default adapters (notebook 03's fitted grid) carry the centre their runs subtracted: the zero-shot reference
    subtracts it too (it reproduces notebook 03's centred zero-shot rows, checked cell by cell in notebook 07 under
    nbval); an adapter of the first grid (no centre) beside one of the fitted grid is refused before any work."""
    from afr.adapters.registry import CENTRE_NAME
    from afr.analysis import report as report_module
    from safetensors.torch import load_file

    monkeypatch.setattr(report_module, "SCRATCH_DIR", tmp_path / "scratch")
    report = FigureReport(AnalysisSettings(progress=False, interactive=False))
    saved = load_file(str(RESULTS / "adapters" / "dalora-fitted" / "lora_seed0" / CENTRE_NAME))["centre"]
    assert report.settings.adapters == report_module.DEFAULT_ADAPTERS
    assert torch.equal(report.embedder.zero_shot_centre, saved)
    zero = report.embedder.model("zero-shot", "thermal")
    assert torch.equal(zero.embedding_centre, saved)
    assert report.model_label("zero-shot") == "zero-shot (centred)"  # the t-SNE panel says so
    with pytest.raises(ValueError, match="different embedding centres"):
        FigureReport(AnalysisSettings(adapters=("dalora-fitted/lora_seed0", "lora_seed0"), progress=False,
                                      interactive=False))


def test_the_figures_means_leave_the_flagged_runs_out(tmp_path, monkeypatch):
    """Notebook 07's sensitivity and curve panels average only the runs the training-health check keeps, as the
    paper's tables do: rank 32 of notebook 06 (every run flagged) has no point, rank 16 one seed, and notebook 04's
    diverged second-order seeds are in no curve."""
    from afr.analysis.committed import maml_curves
    from afr.experiments.grids import CommittedGrids
    from afr.experiments.health import flagged_runs, healthy_rows

    monkeypatch.setattr(report_module, "SCRATCH_DIR", tmp_path / "scratch")
    report = FigureReport(AnalysisSettings(progress=False, interactive=False))
    flagged = set(flagged_runs(RESULTS))
    _, summary = report.sensitivity()
    table = CommittedGrids().reported_ablation_rows(pd.read_csv(RESULTS / "tables" / "ablations.csv"))
    healthy = table[~table["run"].isin(flagged) & (table["metric"] == "auc") & (table["split"] == "test")]
    expected = healthy.groupby(["group", "cell", "domain"])["seed"].nunique()
    drawn = summary.set_index(["group", "cell", "domain"])["seeds"]
    assert drawn.sort_index().to_dict() == expected.sort_index().to_dict()
    rank = summary[summary["group"] == "rank"]
    assert "32" not in set(rank["cell"].astype(str)) and set(rank.loc[rank["cell"].astype(str) == "16", "seeds"]) == {1}
    _, (maml_summary, _) = report.curves()
    reported = CommittedGrids().maml.grid
    maml = maml_curves(pd.read_csv(RESULTS / "tables" / "maml.csv"), grid=reported)  # every run, flagged or not
    assert maml_summary.set_index(["method", "domain", "shots", "steps"])["seeds"].to_dict() == {
        key: seeds for key, seeds in maml_curves(healthy_rows(pd.read_csv(RESULTS / "tables" / "maml.csv"), RESULTS),
                                                 grid=reported)
        .set_index(["method", "domain", "shots", "steps"])["seeds"].items()}
    grids = CommittedGrids()
    clipped = grids.maml_tags(grids.maml_clipped)  # three inner steps: second order diverged with the clip too
    assert {key for key, tag in clipped.items() if tag in flagged} >= {("maml", 0), ("maml", 1)}
    grid_tags = grids.maml_tags()
    flagged_starts = {key for key, tag in grid_tags.items() if tag in flagged}
    for method in ("maml", "fomaml", "pooled-lora", "random"):  # each curve has the healthy seeds of its start
        healthy = len([key for key in grid_tags if key[0] == method and key not in flagged_starts])
        drawn = maml_summary.loc[maml_summary["method"] == method, "seeds"]
        assert (int(drawn.max()) if len(drawn) else 0) == healthy, method
    assert set(maml.loc[maml["method"] == "maml", "seeds"]) == {3}  # every seed, flagged or not
    assert set(maml_summary["split"]) == {"val"}  # the grid scored its test pack once, at the chosen step count


def test_the_maml_curves_of_a_grid_that_chose_its_step_count_on_validation_are_its_validation_curves():
    """A grid that scored its test pack once, at the step count validation chose, is drawn from its validation rows
    (its test rows sit at a different step count per run and are no curve); a grid without the choice from its test
    rows; runs with fewer outer steps (the demo) are not mixed in."""
    from afr.analysis.committed import maml_curves

    rows = []
    for seed in (0, 1, 2):
        for steps in (0, 1, 3):
            rows.append({"method": "maml", "seed": seed, "shots": 1, "steps": steps, "metric": "auc", "split": "val",
                         "value": 0.7 + 0.01 * steps, "meta_steps": 60, "choose_steps_on_validation": True,
                         "domain": "thermal_und"})
            rows.append({"method": "maml", "seed": seed, "shots": 1, "steps": steps, "metric": "auc", "split": "test",
                         "value": 0.5, "meta_steps": 60, "choose_steps_on_validation": None, "domain": "thermal_und"})
            rows.append({"method": "maml", "seed": seed, "shots": 1, "steps": steps, "metric": "auc", "split": "test",
                         "value": 0.4, "meta_steps": 10, "choose_steps_on_validation": None, "domain": "thermal_und"})
        rows.append({"method": "maml", "seed": seed, "shots": 1, "steps": seed, "metric": "auc", "split": "test",
                     "value": 0.9, "meta_steps": 60, "choose_steps_on_validation": True, "domain": "thermal_und"})
    table = pd.DataFrame(rows)
    chosen = maml_curves(table)
    assert set(chosen["split"]) == {"val"} and chosen.set_index("steps")["mean"].round(4).to_dict() == {
        0: 0.7, 1: 0.71, 3: 0.73}
    assert set(chosen["seeds"]) == {3}
    plain = maml_curves(table[table["choose_steps_on_validation"].isna()])
    assert set(plain["split"]) == {"test"} and set(plain["mean"]) == {0.5}
    # two grids that both chose on validation: the named one is drawn, never a mix
    other = table[table["split"] == "val"].assign(value=0.6, grid="maml-other")
    both = pd.concat([table.assign(grid="maml-a"), other], ignore_index=True)
    assert set(maml_curves(both, grid="maml-other")["mean"]) == {0.6}
    assert maml_curves(both, grid="maml-a").set_index("steps")["mean"].round(4).to_dict() == {0: 0.7, 1: 0.71, 3: 0.73}
