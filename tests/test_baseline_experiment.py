"""Baseline experiment glue: identity subsets, deduplicated pack embedding, LoRA training on real chips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dataclasses
import json
from pathlib import Path

import torch.nn.functional as F

from afr.data.embedded import VAL_DOMAINS
from afr.data.recordio import RecordIODataset
from afr.data.subsets import RelabelledSubset, identity_subset
from afr.data.verification import load_pack
from afr.eval.extract import extract_embeddings, extract_unique_embeddings
from afr.experiments.baseline import (BaselineSettings, _full_test_packs, load_data, pack_evaluators, run_baseline,
                                      run_dir, train_lora)
from afr.experiments.training_setup import class_mean_embeddings
from afr.experiments.records import append_rows, metric_rows, read_table, result_path
from afr.models import FaceRecognitionModel, create_backbone
from afr.models.factory import architecture_config
from afr.models.heads import ClassCentres
from afr.paths import MissingResourceError
from afr.train import RunExistsError, TrainConfig, Trainer


def test_identity_subset_keeps_all_images_of_the_drawn_identities(embedded_benchmark):
    dataset = RecordIODataset(embedded_benchmark.train_dir)
    subset = identity_subset(dataset, 10, seed=3)
    assert isinstance(subset, RelabelledSubset) and subset.num_classes == 10
    chosen = set(subset.original_labels.tolist())
    assert len(subset) == int(np.isin(dataset.labels, list(chosen)).sum())
    assert sorted(set(subset.labels.tolist())) == list(range(10))
    image, label, _ = subset[len(subset) - 1]
    assert image.shape == (150, 150, 3)
    assert subset.original_labels[label] == dataset.labels[subset.indices[-1]]
    assert set(identity_subset(dataset, 10, seed=4).original_labels.tolist()) != chosen
    assert identity_subset(dataset, None) is dataset


def test_unique_embeddings_equal_plain_extraction_on_a_pack_with_repeats(embedded_benchmark):
    pack = load_pack(embedded_benchmark.bin_path("wild"))
    images = pack.images[:40]
    backbone = create_backbone("dlib-resnet29")
    np.testing.assert_allclose(extract_unique_embeddings(backbone, images), extract_embeddings(backbone, images),
                               atol=1e-6)


def test_full_profile_names_what_is_missing(tmp_path):
    (tmp_path / "lfw.bin").write_bytes(b"")
    with pytest.raises(MissingResourceError, match="cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin"):
        _full_test_packs(BaselineSettings(data_profile="full", bins_dir=str(tmp_path)))
    with pytest.raises(MissingResourceError, match="bins_dir"):
        _full_test_packs(BaselineSettings(data_profile="full"))
    with pytest.raises(MissingResourceError, match="train_rec"):
        load_data(BaselineSettings(data_profile="full", bins_dir=str(tmp_path)))


class DomainRecordingModel(FaceRecognitionModel):
    """Remembers the domain codes of every batch it is trained on."""

    def forward(self, images, labels=None, domains=None):
        self.seen_domains.append(domains.clone())
        return super().forward(images, labels, domains)


def test_the_domain_of_every_training_image_reaches_the_model(embedded_benchmark, tmp_path):
    dataset = RecordIODataset(embedded_benchmark.train_dir)
    subset = RelabelledSubset(dataset, np.arange(0, len(dataset), 11))  # every domain, 65 images
    model = DomainRecordingModel(create_backbone("tiny-dinov2"), subset.num_classes)
    model.seen_domains = []
    config = TrainConfig(epochs=1, batch_size=16, drop_last=False, output_dir=str(tmp_path), progress=False)
    result = Trainer(model, subset, config).fit()
    seen = torch.cat(model.seen_domains)
    assert sorted(seen.tolist()) == sorted(dataset.domains[subset.indices].tolist())
    assert len(set(seen.tolist())) == 3
    assert result.history[0]["train_margin"] == pytest.approx(result.history[0]["train_loss"])  # the one term


def test_lora_training_on_real_chips_trains_only_adapters_and_centres(embedded_benchmark, tmp_path):
    dataset = identity_subset(RecordIODataset(embedded_benchmark.train_dir), 6, seed=0)
    val_packs = {"thermal": load_pack(embedded_benchmark.bin_path("thermal", "val"))}
    backbone = create_backbone("tiny-dinov2")
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    settings = BaselineSettings(backbone="tiny-dinov2", rank=4, epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2,
                                warmup_epochs=0, progress=False, output_dir=str(tmp_path / "run"))
    model, result = train_lora(backbone, dataset, settings, val_packs)
    assert result.epoch == 2 and len(result.history) == 2
    assert {"val/thermal/accuracy", "val/thermal/auc"} <= set(result.history[-1])
    assert 0.0 <= result.history[-1]["val/thermal/auc"] <= 1.0
    after = {name.replace(".base_layer", ""): p for name, p in model.backbone.named_parameters() if "lora_" not in name}
    assert after.keys() == before.keys()  # every pretrained weight is still there (peft moves wrapped ones)
    changed = {name for name, p in after.items() if not torch.equal(p, before[name])}
    assert not changed  # the pretrained weights stay frozen
    lora_names = [name for name, p in model.backbone.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in name for name in lora_names)
    assert model.head.weight.shape == (6, backbone.embedding_dim)


def test_class_mean_centres_are_the_normalised_mean_embeddings(embedded_benchmark):
    dataset = identity_subset(RecordIODataset(embedded_benchmark.train_dir), 4, seed=0)
    backbone = create_backbone("tiny-dinov2")
    embeddings, labels = class_mean_embeddings(backbone, dataset, 16, torch.device("cpu"))
    head = ClassCentres(backbone.embedding_dim, 4)
    head.initialise_from_embeddings(embeddings, labels)
    for label in range(4):
        expected = F.normalize(F.normalize(embeddings[labels == label], dim=1).mean(0), dim=0)
        torch.testing.assert_close(head.weight[label], expected)
    # each training image is then closest to its own class centre far more often than chance
    predicted = head(embeddings).argmax(1)
    assert (predicted == labels).float().mean() > 0.5


def test_pack_evaluator_reports_the_protocol_accuracy(embedded_benchmark):
    packs = {"wild": load_pack(embedded_benchmark.bin_path("wild"))}
    model = torch.nn.Module()
    model.backbone = create_backbone("dlib-resnet29")
    model.dummy = torch.nn.Parameter(torch.zeros(1))
    metrics = pack_evaluators(packs)["val/wild"](model)
    assert metrics["accuracy"] > 0.98 and metrics["auc"] > 0.99  # the pretrained dlib net, 280 deepface pairs


def _files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_second_run_never_destroys_the_first(embedded_benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AFR_RUNS", str(tmp_path / "runs"))
    first = BaselineSettings(backbone="tiny-dinov2", rank=2, epochs=1, batch_size=64, benchmarks=("wild",),
                             progress=False)
    result = run_baseline(first)
    # per-epoch validation came from the validation packs only: no test pack, no wild (test-only) pack
    assert {key.split("/")[1] for key in result["train"]["history"][0] if key.startswith("val/")} == set(VAL_DOMAINS)
    assert set(result["test"]["lora"]) == {"wild"}
    assert result["train"]["lora_trainable_parameters"] > 0  # counted on the model, not on a merged copy
    kept = {**_files(run_dir(first)), **_files(tmp_path / "results")}
    assert any(path.name == "adapter_model.safetensors" for path in kept)
    assert any(path.name.startswith("checkpoint-") for path in kept)

    second = dataclasses.replace(first, lr=1e-3)
    run_baseline(second)
    assert second.tag != first.tag
    for path, content in kept.items():
        if path.parent.name != "tables":
            assert path.read_bytes() == content, path
    table = read_table("baseline")
    assert set(table["run"]) == {first.tag, second.tag}
    assert len(table[table["run"] == first.tag]) == len(table[table["run"] == second.tag]) > 0

    # the same settings again reuse the record (one line naming overwrite), training nothing; another run pointed
    # at the first run's folder is refused before training
    lines = []
    assert run_baseline(first, report=lines.append) == json.loads(result_path(first.tag).read_text())
    assert len(lines) == 1 and lines[0].startswith("reusing the recorded run " + first.tag) and "overwrite = True" in lines[0]
    with pytest.raises(RunExistsError, match="resume"):
        run_baseline(dataclasses.replace(first, lr=1e-4, output_dir=str(run_dir(first))))
    for path, content in kept.items():
        if path.parent.name != "tables":
            assert path.read_bytes() == content, path


def test_tidy_rows_of_a_rerun_replace_only_that_runs_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path))
    metrics = {"thermal": {"accuracy_mean": 0.8, "accuracy_std": 0.1, "auc": 0.9, "eer": 0.2}}
    append_rows("demo", metric_rows("demo", "run-a", "lora", 0, metrics))
    append_rows("demo", metric_rows("demo", "run-b", "lora", 1, metrics, {"lr": 3e-4}))
    append_rows("demo", metric_rows("demo", "run-a", "lora", 0, {"thermal": {**metrics["thermal"], "auc": 0.95}}))
    table = read_table("demo")
    assert list(table.columns[:7]) == ["experiment", "run", "method", "domain", "metric", "seed", "value"]
    assert len(table) == 8 and sorted(table["run"].unique()) == ["run-a", "run-b"]
    auc = table[(table["metric"] == "auc")].set_index("run")["value"]
    assert auc["run-a"] == 0.95 and auc["run-b"] == 0.9
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize("name, millions", [("dinov2-vits14", 21.6), ("clip-vitb16", 86.2)])
def test_architecture_configs_have_the_published_sizes(name, millions):
    from afr.models.vit import HFViTBackbone

    backbone = HFViTBackbone.from_config(architecture_config(name), name=name)
    assert sum(p.numel() for p in backbone.parameters()) / 1e6 == pytest.approx(millions, abs=0.2)


def test_pack_listing_keeps_validation_and_test_packs_of_one_domain_apart():
    """Validation and test packs share domain names (controlled, thermal, lowquality): a listing keyed by name alone
    showed only the test packs (issue 16 item 4); the split is part of the key."""
    from afr.data.verification import VerificationPack
    from afr.experiments.baseline import BaselineData

    def pack(name, digest, pairs, path):
        return VerificationPack(name, [np.zeros((2, 2, 3), np.uint8)] * (2 * pairs), np.array([True, False] * (pairs // 2)),
                                digest, Path(path) if path else None)

    data = BaselineData(train=None,
                        val_packs={"controlled": pack("controlled", "a" * 64, 4, "/b/val/controlled.bin"),
                                   "thermal": pack("thermal", "b" * 64, 2, None)},
                        test_packs={"controlled": pack("controlled", "c" * 64, 6, "/b/test/controlled.bin"),
                                    "wild": pack("wild", "d" * 64, 2, "/b/test/wild.bin")})
    digests = data.pack_digests()
    assert list(digests) == ["validation/controlled", "validation/thermal", "test/controlled", "test/wild"]
    assert digests["validation/controlled"] == {"sha256": "a" * 64, "pairs": 4, "path": "/b/val/controlled.bin"}
    assert digests["test/controlled"]["sha256"] == "c" * 64
    assert digests["validation/thermal"]["path"] is None
    lines = data.pack_listing().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("validation/controlled  sha256 " + "a" * 64) and "/b/val/controlled.bin" in lines[0]
    assert lines[2].startswith("test/controlled        sha256 " + "c" * 64)
    assert "in memory" in lines[1]
