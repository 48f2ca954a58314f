"""Build a :class:`~afr.models.base.Backbone` by name.

=================  ==========================================================================
name               what
=================  ==========================================================================
``dlib-resnet29``  dlib's pretrained ResNet-29 (128-D); weights default to
                   ``weights_root() / "dlib_resnet29"`` (the shared folder)
``dinov2-vits14``  DINOv2 ViT-S/14 (384-D CLS) from a local copy of ``facebook/dinov2-small``
``dinov2-vitb14``  DINOv2 ViT-B/14 (768-D) — ``facebook/dinov2-base``
``dinov2-vitl14``  DINOv2 ViT-L/14 (1024-D) — ``facebook/dinov2-large``
``dinov2-vitg14``  DINOv2 ViT-g/14 (1536-D) — ``facebook/dinov2-giant``
``clip-vitb16``    CLIP ViT-B/16 image tower (512-D projected CLS) — ``openai/clip-vit-base-patch16``
``clip-vitb32``    CLIP ViT-B/32 (512-D) — ``openai/clip-vit-base-patch32``
``clip-vitl14``    CLIP ViT-L/14 (768-D) — ``openai/clip-vit-large-patch14``
``tiny-dinov2``    random tiny DINOv2 (hidden 32, 2 layers, 2 heads, 28 px, patch 7) for tests
``tiny-clip``      random tiny CLIP vision tower (hidden 32, 2 layers, 2 heads, 32 px, patch 8,
                   projection 24) for tests
``timm:<model>``   a timm ViT from a local checkpoint file, e.g. ``timm:vit_small_patch14_dinov2``
                   or ``timm:vit_base_patch16_clip_quickgelu_224`` (optional: ``pip install .[timm]``;
                   :mod:`afr.models.timm_vit`)
=================  ==========================================================================

The DINOv2/CLIP names need ``weights`` = a local Hugging Face directory (``config.json`` plus
``model.safetensors``/``pytorch_model.bin``, possibly sharded); nothing is downloaded at run time. Extra
keyword arguments go to :meth:`afr.models.vit.HFViTBackbone.from_pretrained` (``image_size``,
``embedding_dim``, ``clip_projection``) or ``from_config`` for the tiny models. The ``timm:`` names need
``weights`` = a local checkpoint file (or a directory holding ``model.safetensors``/``pytorch_model.bin``);
extra keyword arguments go to :meth:`afr.models.timm_vit.TimmViTBackbone.from_checkpoint`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afr.models.base import Backbone
from afr.paths import MissingResourceError, weights_root

__all__ = [
    "BackboneMismatchError",
    "HFBackboneSpec",
    "HF_BACKBONES",
    "MissingWeightsError",
    "TIMM_PREFIX",
    "UnknownBackboneError",
    "architecture_config",
    "available_backbones",
    "check_hf_directory",
    "create_backbone",
    "tiny_clip_config",
    "tiny_dinov2_config",
]

#: file names that hold a transformers model's weights (single file or sharded index)
HF_WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class MissingWeightsError(MissingResourceError):
    """A backbone's weights are not on disk; the message names the expected directory and how to get it."""


class UnknownBackboneError(ValueError):
    """The backbone name is not one :func:`available_backbones` lists."""


class BackboneMismatchError(ValueError):
    """A weights directory holds a different model than the requested backbone name."""


@dataclass(frozen=True)
class HFBackboneSpec:
    """A named Hugging Face backbone: family, hub repository to fetch it from, expected width."""

    family: str  # "dinov2" or "clip"
    repo_id: str  # where to download it on a machine with internet access
    hidden_size: int  # transformer width, checked against the directory's config.json


HF_BACKBONES: dict[str, HFBackboneSpec] = {
    "dinov2-vits14": HFBackboneSpec("dinov2", "facebook/dinov2-small", 384),
    "dinov2-vitb14": HFBackboneSpec("dinov2", "facebook/dinov2-base", 768),
    "dinov2-vitl14": HFBackboneSpec("dinov2", "facebook/dinov2-large", 1024),
    "dinov2-vitg14": HFBackboneSpec("dinov2", "facebook/dinov2-giant", 1536),
    "clip-vitb16": HFBackboneSpec("clip", "openai/clip-vit-base-patch16", 768),
    "clip-vitb32": HFBackboneSpec("clip", "openai/clip-vit-base-patch32", 768),
    "clip-vitl14": HFBackboneSpec("clip", "openai/clip-vit-large-patch14", 1024),
}

DLIB_NAME = "dlib-resnet29"
TINY_NAMES: tuple[str, ...] = ("tiny-dinov2", "tiny-clip")
#: prefix of the timm backbones (``timm:vit_small_patch14_dinov2``); any timm ViT name follows it
TIMM_PREFIX = "timm:"
_MODEL_TYPES = {"dinov2": ("dinov2",), "clip": ("clip", "clip_vision_model")}


def available_backbones() -> list[str]:
    """Every name :func:`create_backbone` accepts."""
    return [DLIB_NAME, *HF_BACKBONES, *TINY_NAMES]


def tiny_dinov2_config():
    """A random-initialisable DINOv2 config small enough for unit tests (hidden 32, 2 layers, 28 px)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=7
    )


def tiny_clip_config():
    """A tiny full CLIP config (vision: hidden 32, 2 layers, 32 px, patch 8; projection 24) for tests."""
    from transformers import CLIPConfig

    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)


#: depth, heads, patch (and CLIP widths) of each named model as published, for random-weight
#: speed benchmarks; the width is the spec's ``hidden_size``
_ARCHITECTURES: dict[str, dict[str, int]] = {
    "dinov2-vits14": dict(num_hidden_layers=12, num_attention_heads=6, patch_size=14),
    "dinov2-vitb14": dict(num_hidden_layers=12, num_attention_heads=12, patch_size=14),
    "dinov2-vitl14": dict(num_hidden_layers=24, num_attention_heads=16, patch_size=14),
    "clip-vitb16": dict(intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        patch_size=16, projection_dim=512),
    "clip-vitb32": dict(intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        patch_size=32, projection_dim=512),
    "clip-vitl14": dict(intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        patch_size=14, projection_dim=768),
}


def architecture_config(name: str, image_size: int = 224):
    """The transformers config of a named ViT's published architecture, for random-weight benchmarks.

    Speed does not depend on weight values, so throughput can be measured without any checkpoint.
    """
    key = name.strip().lower()
    if key not in _ARCHITECTURES:
        raise UnknownBackboneError(f"no architecture for {name!r}; known: {', '.join(_ARCHITECTURES)}")
    arch = dict(_ARCHITECTURES[key], hidden_size=HF_BACKBONES[key].hidden_size)
    if HF_BACKBONES[key].family == "dinov2":
        from transformers import Dinov2Config

        return Dinov2Config(image_size=image_size, **arch)
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=image_size, **arch)


def _how_to_get(name: str, spec: HFBackboneSpec) -> str:
    return (
        f"download {spec.repo_id} on a machine with internet access "
        f"(huggingface-cli download {spec.repo_id} --local-dir DIR), copy DIR here and pass it as "
        f"weights=DIR (--weights DIR on the command line) for {name!r}"
    )


def check_hf_directory(name: str, directory: str | Path | None) -> Path:
    """Check that ``directory`` is a local Hugging Face copy of backbone ``name``; return it as a Path.

    Raises :class:`MissingWeightsError` when the directory is not given, does not exist, or lacks
    ``config.json`` or a weights file, and :class:`BackboneMismatchError` when its ``config.json``
    describes another family or width than ``name`` implies.
    """
    spec = HF_BACKBONES[name]
    if directory is None:
        raise MissingWeightsError(
            f"{name} needs a local Hugging Face directory holding {spec.repo_id}; none was given: "
            + _how_to_get(name, spec)
        )
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise MissingWeightsError(f"{name}: weights directory {directory} not found: " + _how_to_get(name, spec))
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise MissingWeightsError(
            f"{name}: {config_path} not found ({directory} is not a Hugging Face model directory): "
            + _how_to_get(name, spec)
        )
    if not any((directory / file).is_file() for file in HF_WEIGHT_FILES):
        raise MissingWeightsError(
            f"{name}: {directory} has config.json but no weights (expected one of {', '.join(HF_WEIGHT_FILES)}): "
            + _how_to_get(name, spec)
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise BackboneMismatchError(f"{config_path} is not valid JSON: {error}") from error
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES[spec.family]:
        raise BackboneMismatchError(
            f"{directory} holds a {model_type!r} model but {name} needs {spec.family} ({spec.repo_id})"
        )
    vision = (config.get("vision_config") or {}) if model_type == "clip" else config
    hidden = vision.get("hidden_size", spec.hidden_size)
    if hidden != spec.hidden_size:
        raise BackboneMismatchError(
            f"{directory} holds a {spec.family} model of width {hidden} but {name} has width "
            f"{spec.hidden_size} ({spec.repo_id})"
        )
    return directory


def create_backbone(name: str, weights: str | Path | None = None, **kwargs: Any) -> Backbone:
    """The backbone called ``name`` (see :func:`available_backbones` and the module docstring).

    ``weights`` is the weights directory: for ``dlib-resnet29`` it defaults to the shared
    ``weights/dlib_resnet29``; the DINOv2/CLIP names require a local Hugging Face directory; the tiny
    test models take none. Missing weights raise :class:`MissingWeightsError` (a
    :class:`~afr.paths.MissingResourceError`) naming the directory and how to obtain it.
    """
    key = name.strip().lower()
    if key == DLIB_NAME:
        if kwargs:
            raise TypeError(f"{DLIB_NAME} takes no options, got {sorted(kwargs)}")
        from afr.models.dlib_resnet import load_dlib_resnet29  # imported lazily (keeps `import afr.models` cheap)

        try:
            directory = Path(weights) if weights is not None else weights_root() / "dlib_resnet29"
            return load_dlib_resnet29(directory)
        except MissingResourceError as error:
            raise MissingWeightsError(
                f"{DLIB_NAME} weights not found ({error}); they ship in the shared folder as "
                "weights/dlib_resnet29 (set AFR_SHARED to the folder holding them) or pass weights=DIR"
            ) from error
    if key in HF_BACKBONES:
        directory = check_hf_directory(key, weights)
        from afr.models.vit import HFViTBackbone

        return HFViTBackbone.from_pretrained(directory, family=HF_BACKBONES[key].family, name=key, **kwargs)
    if key in TINY_NAMES:
        if weights is not None:
            raise ValueError(f"{key} is a random test model and takes no weights (got {weights})")
        from afr.models.vit import HFViTBackbone

        config = tiny_dinov2_config() if key == "tiny-dinov2" else tiny_clip_config()
        return HFViTBackbone.from_config(config, name=key, **kwargs)
    if key.startswith(TIMM_PREFIX) and key != TIMM_PREFIX:
        from afr.models.timm_vit import TimmViTBackbone  # timm itself is imported only when the model is built

        model_name = name.strip()[len(TIMM_PREFIX):]
        return TimmViTBackbone.from_checkpoint(model_name, weights, name=TIMM_PREFIX + model_name, **kwargs)
    raise UnknownBackboneError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}, or "
                               f"{TIMM_PREFIX}<timm model name> (e.g. {TIMM_PREFIX}vit_small_patch14_dinov2; "
                               "pip install .[timm])")
