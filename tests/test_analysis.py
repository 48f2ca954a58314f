"""Notebook 07's library (afr.analysis) on the real embedded test packs, committed adapters and tiny ViTs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from afr.analysis.committed import crossdomain_curves, gate_matrices, published_records
from afr.analysis.decisions import at_threshold, protocol_decisions
from afr.analysis.embeddings import PackEmbedder
from afr.analysis.errors import FALSE_ACCEPT, FALSE_REJECT, error_analysis, image_attributes, worst_errors
from afr.analysis.explorer import ThresholdExplorer, flipped_pairs, live_frontend, sweep
from afr.analysis.packs import PackMismatchError, labelled_test_pack
from afr.analysis.plots import figure_paths, save_figure, sensitivity_figure
from afr.analysis.report import AnalysisSettings, FigureReport, existing_outputs
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
    assert not live_frontend()  # no kernel here: widgets are never built in a batch run


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


def test_sensitivity_figure_says_when_ablations_are_missing():
    fig = sensitivity_figure(None)
    assert "ablations not run yet" in " ".join(text.get_text() for text in fig.axes[0].texts)


def test_report_refuses_to_replace_outputs_without_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    fig = sensitivity_figure(None)
    pdf, png = save_figure(fig, "sensitivity", tmp_path / "figures")
    assert (pdf, png) == figure_paths(tmp_path / "figures", "sensitivity") and pdf.read_bytes()[:4] == b"%PDF"
    assert existing_outputs() == [pdf, png]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        FigureReport(AnalysisSettings(progress=False))


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
