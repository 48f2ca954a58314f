"""DINOv2 / CLIP backbones: tiny models from configs, local-directory loading, the factory's errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from afr.models import Backbone, create_backbone
from afr.models.factory import (
    BackboneMismatchError,
    MissingWeightsError,
    UnknownBackboneError,
    available_backbones,
    tiny_clip_config,
    tiny_dinov2_config,
)
from afr.models.vit import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, HFViTBackbone
from afr.paths import MissingResourceError


@pytest.fixture
def faces() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 112, 112, generator=generator)


def _manual_pixels(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    resized = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    resized = resized.clamp(0, 1)
    return (resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_tiny_dinov2_shapes_and_contract(faces):
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    assert isinstance(backbone, Backbone)
    assert (backbone.alignment, backbone.input_size, backbone.image_size) == ("arcface", 112, 28)
    with torch.no_grad():
        out = backbone(faces)
    assert out.shape == (3, 32) == (3, backbone.embedding_dim)
    assert torch.isfinite(out).all()
    # different faces give different embeddings
    assert not torch.allclose(out[0], out[1])


def test_dinov2_pipeline_is_resize_normalise_then_cls(faces):
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert backbone.pixel_std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    with torch.no_grad():
        out = backbone(faces)
        outputs = backbone.model(pixel_values=_manual_pixels(faces, 28, IMAGENET_MEAN, IMAGENET_STD))
        # the CLS token of the encoder output after the final layernorm
        pixels = _manual_pixels(faces, 28, IMAGENET_MEAN, IMAGENET_STD)
        hidden = backbone.model.encoder(backbone.model.embeddings(pixels)).last_hidden_state
        cls = backbone.model.layernorm(hidden)[:, 0]
    torch.testing.assert_close(out, outputs.pooler_output)
    torch.testing.assert_close(out, cls)
    # the normalisation matters: without it the embedding differs
    with torch.no_grad():
        unnormalised = backbone.model(pixel_values=_manual_pixels(faces, 28, (0, 0, 0), (1, 1, 1))).pooler_output
    assert not torch.allclose(out, unnormalised, atol=1e-3)


def test_tiny_clip_uses_projected_post_layernorm_cls(faces):
    torch.manual_seed(0)
    backbone = create_backbone("tiny-clip")
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx(CLIP_MEAN)
    assert backbone.pixel_std.flatten().tolist() == pytest.approx(CLIP_STD)
    assert backbone.embedding_dim == 24  # the CLIP projection width, not the hidden width 32
    with torch.no_grad():
        out = backbone(faces)
        vision = backbone.model.vision_model(pixel_values=_manual_pixels(faces, 32, CLIP_MEAN, CLIP_STD))
        expected_pooled = backbone.model.vision_model.post_layernorm(vision.last_hidden_state[:, 0])
    torch.testing.assert_close(vision.pooler_output, expected_pooled)
    torch.testing.assert_close(out, backbone.model.visual_projection(vision.pooler_output))
    assert out.shape == (3, 24)


def test_clip_without_projection_and_with_new_projection(faces):
    torch.manual_seed(0)
    plain = create_backbone("tiny-clip", clip_projection=False)
    assert plain.embedding_dim == 32 and plain.projection is None
    with torch.no_grad():
        assert plain(faces).shape == (3, 32)
    projected = create_backbone("tiny-dinov2", embedding_dim=20)
    assert projected.embedding_dim == 20 and projected.extra_trainable_modules == ("projection",)
    with torch.no_grad():
        native = projected.model(pixel_values=projected.preprocess(faces)).pooler_output
        torch.testing.assert_close(projected(faces), projected.projection(native))


def test_default_lora_targets_follow_module_names():
    backbone = create_backbone("tiny-dinov2")
    leaves = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    expected = ("q_proj", "v_proj") if "q_proj" in leaves else ("query", "value")
    assert backbone.default_lora_targets == expected
    assert set(expected) <= leaves


def test_bad_input_is_one_clear_error():
    backbone = create_backbone("tiny-dinov2")
    with pytest.raises(ValueError, match="tiny-dinov2 expects a float"):
        backbone(torch.rand(2, 112, 112))
    with pytest.raises(ValueError, match="float RGB"):
        backbone(torch.zeros(2, 3, 112, 112, dtype=torch.uint8))


def _save_tiny_dinov2(directory: Path, preprocessor: dict | None = None) -> HFViTBackbone:
    from transformers import Dinov2Model

    torch.manual_seed(1)
    model = Dinov2Model(tiny_dinov2_config())
    model.save_pretrained(directory)
    if preprocessor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return HFViTBackbone(model, name="reference", image_size=28).eval()


def test_from_pretrained_local_directory_reads_preprocessor_stats(tmp_path, faces):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    reference = _save_tiny_dinov2(tmp_path, {"image_mean": list(mean), "image_std": list(std)})
    loaded = HFViTBackbone.from_pretrained(tmp_path, family="dinov2", name="local", image_size=28)
    assert loaded.pixel_mean.flatten().tolist() == pytest.approx(mean)
    assert loaded.pixel_std.flatten().tolist() == pytest.approx(std)
    assert not loaded.training
    with torch.no_grad():
        expected = reference.model(pixel_values=_manual_pixels(faces, 28, mean, std)).pooler_output
        torch.testing.assert_close(loaded(faces), expected)


def test_loading_a_checkpoint_draws_no_progress_bar_and_restores_the_setting(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    _save_tiny_dinov2(tmp_path)
    capfd.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    HFViTBackbone.from_pretrained(tmp_path, family="dinov2", image_size=28)
    assert "Loading weights" not in "".join(capfd.readouterr())
    assert hf_logging.is_progress_bar_enabled()  # other code's bars are left as they were


def test_clip_full_checkpoint_and_vision_only_checkpoint(tmp_path, faces):
    from transformers import CLIPModel, CLIPVisionModel

    torch.manual_seed(2)
    full = CLIPModel(tiny_clip_config())
    full.save_pretrained(tmp_path / "full")
    loaded = HFViTBackbone.from_pretrained(tmp_path / "full", family="clip", name="clip", image_size=32)
    torch.testing.assert_close(loaded.model.visual_projection.weight, full.visual_projection.weight)
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=_manual_pixels(faces, 32, CLIP_MEAN, CLIP_STD))
        expected = getattr(expected, "pooler_output", expected)
        torch.testing.assert_close(loaded(faces), expected)

    CLIPVisionModel(full.config.vision_config).save_pretrained(tmp_path / "vision")
    with pytest.raises(ValueError, match="clip_projection=False"):
        HFViTBackbone.from_pretrained(tmp_path / "vision", family="clip", name="clip", image_size=32)
    vision_only = HFViTBackbone.from_pretrained(
        tmp_path / "vision", family="clip", name="clip", image_size=32, clip_projection=False
    )
    assert vision_only.embedding_dim == 32


def test_missing_weights_errors_name_the_directory(tmp_path):
    with pytest.raises(MissingWeightsError, match="facebook/dinov2-small") as info:
        create_backbone("dinov2-vits14")
    assert "huggingface-cli download facebook/dinov2-small" in str(info.value)
    assert isinstance(info.value, MissingResourceError)

    absent = tmp_path / "no-such-dir"
    with pytest.raises(MissingWeightsError, match=str(absent)):
        create_backbone("clip-vitb16", weights=absent)

    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": 384}))
    with pytest.raises(MissingWeightsError, match=f"{only_config} has config.json but no weights"):
        create_backbone("dinov2-vits14", weights=only_config)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError, match=str(empty / "config.json")):
        create_backbone("dinov2-vitb14", weights=empty)


def test_factory_rejects_a_directory_holding_another_model(tmp_path):
    _save_tiny_dinov2(tmp_path)
    with pytest.raises(BackboneMismatchError, match="width 32 but dinov2-vits14 has width 384"):
        create_backbone("dinov2-vits14", weights=tmp_path)
    with pytest.raises(BackboneMismatchError, match="'dinov2' model but clip-vitb16 needs clip"):
        create_backbone("clip-vitb16", weights=tmp_path)


@pytest.mark.shared("weights/dlib_resnet29")
def test_factory_builds_dlib_resnet29_from_the_shared_weights(faces):
    backbone = create_backbone("dlib-resnet29")
    assert (backbone.name, backbone.embedding_dim, backbone.alignment) == ("dlib-resnet29", 128, "dlib")
    with torch.no_grad():
        assert backbone(faces).shape == (3, 128)


def test_factory_dlib_missing_weights_names_the_directory(tmp_path):
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "absent")):
        create_backbone("dlib-resnet29", weights=tmp_path / "absent")


def test_factory_names():
    names = available_backbones()
    assert {"dlib-resnet29", "dinov2-vits14", "dinov2-vitb14", "clip-vitb16", "tiny-dinov2", "tiny-clip"} <= set(names)
    with pytest.raises(UnknownBackboneError, match="dinov2-vits14"):
        create_backbone("resnet50")
    with pytest.raises(ValueError, match="takes no weights"):
        create_backbone("tiny-clip", weights="somewhere")
