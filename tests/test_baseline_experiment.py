"""Baseline experiment glue: identity subsets, deduplicated pack embedding, LoRA training on real chips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from afr.data.recordio import RecordIODataset
from afr.data.subsets import RelabelledSubset, identity_subset
from afr.eval.extract import extract_embeddings, extract_unique_embeddings
from afr.experiments.baseline import BaselineSettings, load_test_packs, pack_evaluators, train_lora
from afr.models import create_backbone
from afr.models.factory import architecture_config
from afr.paths import MissingResourceError


def test_identity_subset_keeps_all_images_of_the_drawn_identities(embedded_benchmark):
    dataset = RecordIODataset(embedded_benchmark.train_dir)
    subset = identity_subset(dataset, 10, seed=3)
    assert isinstance(subset, RelabelledSubset) and subset.num_classes == 10
    chosen = set(subset.original_labels.tolist())
    assert len(subset) == int(np.isin(dataset.labels, list(chosen)).sum())
    assert sorted(set(subset.labels.tolist())) == list(range(10))
    image, label = subset[len(subset) - 1]
    assert image.shape == (150, 150, 3)
    assert subset.original_labels[label] == dataset.labels[subset.indices[-1]]
    assert set(identity_subset(dataset, 10, seed=4).original_labels.tolist()) != chosen
    assert identity_subset(dataset, None) is dataset


def test_unique_embeddings_equal_plain_extraction_on_a_pack_with_repeats(embedded_benchmark):
    pack = load_test_packs(BaselineSettings(benchmarks=("wild",)))["wild"]
    images = pack.images[:40]
    backbone = create_backbone("dlib-resnet29")
    np.testing.assert_allclose(extract_unique_embeddings(backbone, images), extract_embeddings(backbone, images),
                               atol=1e-6)


def test_full_profile_names_the_missing_packs(tmp_path):
    (tmp_path / "lfw.bin").write_bytes(b"")
    with pytest.raises(MissingResourceError, match="cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin"):
        load_test_packs(BaselineSettings(data_profile="full", bins_dir=str(tmp_path)))
    with pytest.raises(MissingResourceError, match="bins_dir"):
        load_test_packs(BaselineSettings(data_profile="full"))


def test_lora_training_on_real_chips_trains_only_adapters_and_centres(embedded_benchmark, tmp_path):
    dataset = identity_subset(RecordIODataset(embedded_benchmark.train_dir), 6, seed=0)
    packs = load_test_packs(BaselineSettings(benchmarks=("thermal",)))
    backbone = create_backbone("tiny-dinov2")
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    settings = BaselineSettings(backbone="tiny-dinov2", rank=4, epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2,
                                warmup_epochs=0, progress=False, output_dir=str(tmp_path / "run"))
    model, result = train_lora(backbone, dataset, settings, packs)
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


def test_pack_evaluator_reports_the_protocol_accuracy(embedded_benchmark):
    packs = load_test_packs(BaselineSettings(benchmarks=("wild",)))
    model = torch.nn.Module()
    model.backbone = create_backbone("dlib-resnet29")
    model.dummy = torch.nn.Parameter(torch.zeros(1))
    metrics = pack_evaluators(packs)["val/wild"](model)
    assert metrics["accuracy"] > 0.98 and metrics["auc"] > 0.99  # the pretrained dlib net, 280 deepface pairs


@pytest.mark.parametrize("name, millions", [("dinov2-vits14", 21.6), ("clip-vitb16", 86.2)])
def test_architecture_configs_have_the_published_sizes(name, millions):
    from afr.models.vit import HFViTBackbone

    backbone = HFViTBackbone.from_config(architecture_config(name), name=name)
    assert sum(p.numel() for p in backbone.parameters()) / 1e6 == pytest.approx(millions, abs=0.2)
