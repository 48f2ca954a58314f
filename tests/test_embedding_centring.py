"""Embedding centring (afr.models.centring): the real dlib descriptor's cone on real faces, the margin loss it
allows, the centre carried by saved adapters, and the zero-shot reference centred like the runs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afr.adapters import load_adapter, save_adapter
from afr.adapters.lora import LoraSettings, apply_lora
from afr.adapters.registry import CENTRE_NAME
from afr.experiments.health import uniform_margin_loss
from afr.experiments.training_setup import class_mean_embeddings, frozen_backbone, initialise_centres
from afr.losses.margin import CosFaceMargin, MarginLoss
from afr.models import FaceRecognitionModel, create_backbone
from afr.models.centring import centre_embeddings, embedding_centre, mean_unit_embedding

IDENTITIES = 24  # of the embedded training pack's 71: enough for the geometry, a few seconds of CPU


@pytest.fixture(scope="module")
def train_subset(embedded_benchmark):
    from afr.data.subsets import RelabelledSubset, dataset_labels
    from afr.experiments.benchmark_data import load_embedded_benchmark

    train = load_embedded_benchmark().train
    labels = dataset_labels(train)
    keep = np.flatnonzero(labels < IDENTITIES)
    return RelabelledSubset(train, keep)


def _settings(**values):
    return SimpleNamespace(**{"backbone": "dlib-resnet29", "weights": None, "device": "cpu", "num_workers": 0,
                              "head_init": "class-mean", "centre_embeddings": True, **values})


def _class_mean_loss(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    units = F.normalize(embeddings, dim=1)
    centres = F.normalize(torch.stack([units[labels == c].mean(0) for c in range(classes)]), dim=1)
    return float(MarginLoss(CosFaceMargin(64.0, 0.35))(units @ centres.T, labels))


def test_centring_opens_the_descriptor_cone_so_the_margin_loss_starts_well_under_uniform(train_subset):
    backbone = create_backbone("dlib-resnet29", None)
    embeddings, labels = class_mean_embeddings(backbone, train_subset, 64, torch.device("cpu"))
    classes = int(labels.max()) + 1
    uniform = uniform_margin_loss("cosface", classes=classes)
    units = F.normalize(embeddings, dim=1)
    different = labels[:, None] != labels[None, :]
    assert float((units @ units.T)[different].mean()) > 0.8  # the pretrained descriptor: one narrow cone
    assert _class_mean_loss(embeddings, labels, classes) > 0.8 * uniform

    centre = mean_unit_embedding(embeddings)
    centred = units - centre
    assert float((F.normalize(centred, dim=1) @ F.normalize(centred, dim=1).T)[different].mean()) < 0.1
    assert _class_mean_loss(centred, labels, classes) < 0.5 * uniform

    centre_embeddings(backbone, centre)  # the hook gives the same centred embeddings
    again, _ = class_mean_embeddings(backbone, train_subset, 64, torch.device("cpu"))
    torch.testing.assert_close(again, centred, atol=1e-5, rtol=1e-5)


def test_initialise_centres_centres_the_backbone_and_starts_the_head_from_centred_class_means(train_subset):
    backbone = create_backbone("dlib-resnet29", None)
    model = FaceRecognitionModel(backbone, IDENTITIES)
    initialise_centres(model, train_subset, _settings())
    centre = embedding_centre(backbone)
    assert centre is not None and centre.shape == (backbone.embedding_dim,)
    embeddings, labels = class_mean_embeddings(backbone, train_subset, 64, torch.device("cpu"))
    with torch.no_grad():
        loss = float(MarginLoss(CosFaceMargin(64.0, 0.35))(model.head(embeddings), labels))
    assert loss < 0.5 * uniform_margin_loss("cosface", classes=IDENTITIES)

    plain = FaceRecognitionModel(create_backbone("dlib-resnet29", None), IDENTITIES)
    initialise_centres(plain, train_subset, _settings(centre_embeddings=False))
    assert embedding_centre(plain.backbone) is None  # off: the backbone is untouched, as the first grids trained


def test_a_saved_adapter_carries_its_centre_and_loading_it_restores_the_centred_embeddings(tmp_path):
    torch.manual_seed(0)
    backbone = apply_lora(create_backbone("dlib-resnet29", None), LoraSettings.square(4))
    centre_embeddings(backbone, F.normalize(torch.randn(128), dim=0) * 0.9)
    for name, parameter in backbone.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.02)  # a trained-looking adapter, not the zero start
    images = torch.rand(3, 3, 150, 150)
    with torch.no_grad():
        expected = backbone.eval()(images)
    save_adapter(backbone, tmp_path / "adapter")
    assert (tmp_path / "adapter" / CENTRE_NAME).is_file()

    loaded = load_adapter(create_backbone("dlib-resnet29", None), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, atol=1e-5, rtol=1e-5)

    (tmp_path / "adapter" / CENTRE_NAME).unlink()  # without its centre the adapter gives other embeddings
    bare = load_adapter(create_backbone("dlib-resnet29", None), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert not torch.allclose(F.normalize(bare(images), dim=1), F.normalize(expected, dim=1), atol=1e-3)


def test_the_zero_shot_reference_is_centred_like_the_runs(train_subset):
    centre = F.normalize(torch.randn(128), dim=0) * 0.5
    zero = frozen_backbone(_settings(), centre=centre)
    torch.testing.assert_close(embedding_centre(zero), centre)
    measured = frozen_backbone(_settings(), train_subset)
    embeddings, _ = class_mean_embeddings(create_backbone("dlib-resnet29", None), train_subset, 64,
                                          torch.device("cpu"))
    torch.testing.assert_close(embedding_centre(measured), mean_unit_embedding(embeddings))
    assert embedding_centre(frozen_backbone(_settings(centre_embeddings=False))) is None
    with pytest.raises(ValueError, match="training images"):
        frozen_backbone(_settings())


def test_a_centre_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="128"):
        centre_embeddings(create_backbone("dlib-resnet29", None), torch.zeros(64))


def test_a_corrupt_centre_file_is_one_error_naming_it(tmp_path):
    backbone = apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=2, alpha=2.0))
    centre_embeddings(backbone, torch.zeros(backbone.embedding_dim))
    save_adapter(backbone, tmp_path / "adapter")
    (tmp_path / "adapter" / CENTRE_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{CENTRE_NAME} is not a saved embedding centre"):
        load_adapter(create_backbone("tiny-dinov2"), tmp_path / "adapter")
