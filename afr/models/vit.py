"""Hugging Face vision transformers (DINOv2, CLIP) as face backbones.

:class:`HFViTBackbone` wraps a ``transformers`` :class:`~transformers.Dinov2Model`,
:class:`~transformers.CLIPVisionModelWithProjection` or :class:`~transformers.CLIPVisionModel`, either
loaded from a *local* Hugging Face directory (``from_pretrained(dir, local_files_only=True)``; nothing is
ever downloaded) or built from a config (tiny random models for tests).

Pipeline of :meth:`HFViTBackbone.forward`, for ArcFace-aligned 112x112 chips (float RGB in ``[0, 1]``):

1. resize to ``image_size`` (224 by default) with ``F.interpolate(mode="bicubic", align_corners=False)``
   (anti-aliased when shrinking), then clamp to ``[0, 1]`` (bicubic overshoots);
2. normalise with the model's own mean/std: DINOv2 uses ImageNet's (0.485, 0.456, 0.406) /
   (0.229, 0.224, 0.225), CLIP its own (0.48145466, 0.4578275, 0.40821073) / (0.26862954, 0.26130258,
   0.27577711); ``image_mean``/``image_std`` of a local ``preprocessor_config.json`` take precedence;
3. embed with the CLS token:

   * DINOv2: ``pooler_output``, i.e. ``last_hidden_state[:, 0]`` after the final LayerNorm (the
     ``x_norm_clstoken`` of the original DINOv2 code), width ``hidden_size`` (384 for ViT-S/14);
   * CLIP with ``clip_projection=True`` (default): ``image_embeds`` = ``visual_projection(pooler_output)``,
     where ``pooler_output`` is the CLS token after ``post_layernorm``. This is CLIP's ``encode_image``,
     the feature FRoundation (Chettaoui et al., 2024) feeds its CosFace head (512-D for ViT-B/16);
   * CLIP with ``clip_projection=False``: ``pooler_output`` itself (width ``hidden_size``, 768 for B/16);

4. optionally a new linear layer ``projection`` (no bias) to ``embedding_dim`` when that differs from the
   width above. FRoundation adds no such layer (its head sits directly on the DINOv2 CLS token and on
   CLIP's projected feature), so the default ``embedding_dim=None`` keeps the native width. The new layer
   is randomly initialised, so it is listed in ``extra_trainable_modules`` and stays trainable under LoRA.

The output is the raw embedding (not L2-normalised), as the :class:`~afr.models.base.Backbone` contract
requires.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
)

from afr.models.base import Backbone, attach_projection, preprocess_chips, register_pixel_normalisation

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FAMILIES",
    "HFViTBackbone",
    "attention_projection_names",
    "read_preprocessor_stats",
]

#: ImageNet statistics, used by DINOv2's image processor
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: OpenAI CLIP's statistics (``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD`` in transformers)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: model families this module wraps, with their default normalisation
FAMILIES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}

PREPROCESSOR_CONFIG = "preprocessor_config.json"

#: attention projection leaf names, transformers 5.x scheme then 4.x (DINOv2) scheme
_QV_SCHEMES: tuple[tuple[str, str], ...] = (("q_proj", "v_proj"), ("query", "value"))


def read_preprocessor_stats(directory: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(image_mean, image_std)`` from ``directory/preprocessor_config.json``, or None if absent.

    Raises ValueError naming the file when it exists but does not hold three numbers for each.
    """
    path = Path(directory) / PREPROCESSOR_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if "image_mean" not in data and "image_std" not in data:
        return None
    try:
        mean = tuple(float(v) for v in data["image_mean"])
        std = tuple(float(v) for v in data["image_std"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: image_mean/image_std must both be lists of 3 numbers ({error})") from error
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{path}: image_mean/image_std must hold 3 values each, std > 0; got {mean}, {std}")
    return mean, std


def attention_projection_names(model: nn.Module) -> tuple[str, ...]:
    """The leaf names of the attention query/value ``nn.Linear`` layers found in ``model``.

    transformers 5.x names them ``q_proj``/``v_proj`` (CLIP in every version), transformers 4.x DINOv2
    ``query``/``value``; the names are read off ``named_modules()`` so both versions work. Returns ``()``
    when neither scheme is present.
    """
    leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for scheme in _QV_SCHEMES:
        if set(scheme) <= leaves:
            return scheme
    return ()


def _family_of(model: nn.Module) -> str:
    if isinstance(model, Dinov2Model):
        return "dinov2"
    if isinstance(model, (CLIPVisionModel, CLIPVisionModelWithProjection)):
        return "clip"
    raise TypeError(
        f"HFViTBackbone wraps Dinov2Model, CLIPVisionModel or CLIPVisionModelWithProjection, "
        f"got {type(model).__name__}"
    )


@contextmanager
def _without_loading_bars():
    """transformers' "Loading weights" progress bar switched off inside (restored after, if it was on)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class HFViTBackbone(Backbone):
    """A DINOv2 or CLIP vision transformer as a face backbone (see the module docstring for the pipeline).

    Args:
        model: the transformers model (``Dinov2Model``, ``CLIPVisionModelWithProjection`` or
            ``CLIPVisionModel``); the family and the embedding (see module docstring) follow from its type.
        name: backbone name reported in results (e.g. ``"dinov2-vits14"``).
        image_size: side the chips are resized to before the transformer (224 for the real models; tiny
            test models use their small config size).
        mean, std: per-channel normalisation; default: the family's statistics.
        embedding_dim: add a new bias-free ``projection`` layer to this width; None (default) or the
            native width keeps the native embedding.
    """

    alignment = "arcface"
    input_size = 112

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        name: str,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.family = _family_of(model)
        self.model = model
        self.name = name
        if int(image_size) <= 0:
            raise ValueError(f"{name}: image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        default_mean, default_std = FAMILIES[self.family]
        mean = tuple(default_mean if mean is None else mean)
        std = tuple(default_std if std is None else std)
        register_pixel_normalisation(self, mean, std, name)

        config = model.config
        self.uses_clip_projection = isinstance(model, CLIPVisionModelWithProjection)
        attach_projection(self, config.projection_dim if self.uses_clip_projection else config.hidden_size,
                          embedding_dim, name)
        # instance attribute shadows the (empty) class default of Backbone
        self.default_lora_targets = attention_projection_names(model)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        family: str,
        name: str | None = None,
        clip_projection: bool = True,
        image_size: int = 224,
        embedding_dim: int | None = None,
        **model_kwargs: Any,
    ) -> "HFViTBackbone":
        """Load a backbone from a local Hugging Face directory (never from the hub).

        ``family`` is ``"dinov2"`` or ``"clip"``. For CLIP the directory may hold a full ``CLIPModel``
        (``openai/clip-vit-base-patch16``; the text tower is ignored) or a vision-only model; with
        ``clip_projection=True`` it must contain ``visual_projection`` weights. Normalisation comes from
        the directory's ``preprocessor_config.json`` when it has ``image_mean``/``image_std``. The model
        is returned in eval mode. ``model_kwargs`` go to ``from_pretrained`` (e.g. ``attn_implementation``).
        Checking that the directory exists and holds weights is the factory's job
        (:func:`afr.models.factory.create_backbone`).
        """
        directory = Path(directory)
        if family not in FAMILIES:
            raise ValueError(f"unknown ViT family {family!r}; expected one of {sorted(FAMILIES)}")
        with _without_loading_bars():  # experiments build many backbones: one bar each is noise
            if family == "dinov2":
                model, info = Dinov2Model.from_pretrained(
                    directory, local_files_only=True, output_loading_info=True, **model_kwargs
                )
            elif clip_projection:
                config = AutoConfig.from_pretrained(directory, local_files_only=True)
                if isinstance(config, CLIPConfig):
                    # the vision sub-config does not carry the shared projection width; copy it over
                    vision_config = config.vision_config
                    vision_config.projection_dim = config.projection_dim
                else:
                    vision_config = config
                model, info = CLIPVisionModelWithProjection.from_pretrained(
                    directory, config=vision_config, local_files_only=True, output_loading_info=True, **model_kwargs
                )
            else:
                model, info = CLIPVisionModel.from_pretrained(
                    directory, local_files_only=True, output_loading_info=True, **model_kwargs
                )
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            hint = (
                " (a vision-only CLIP checkpoint has no visual_projection: pass clip_projection=False)"
                if any(key.startswith("visual_projection") for key in missing)
                else ""
            )
            raise ValueError(
                f"{directory} lacks weights for {len(missing)} parameter(s) of {type(model).__name__}, "
                f"e.g. {missing[:3]}{hint}"
            )
        stats = read_preprocessor_stats(directory)
        mean, std = stats if stats is not None else (None, None)
        backbone = cls(
            model,
            name=name or f"{family}:{directory.name}",
            image_size=image_size,
            mean=mean,
            std=std,
            embedding_dim=embedding_dim,
        )
        return backbone.eval()

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig,
        *,
        name: str,
        clip_projection: bool = True,
        image_size: int | None = None,
        embedding_dim: int | None = None,
    ) -> "HFViTBackbone":
        """A randomly initialised backbone from a ``Dinov2Config``, ``CLIPVisionConfig`` or ``CLIPConfig``.

        ``image_size`` defaults to the config's own (so tiny test configs stay tiny).
        """
        if isinstance(config, Dinov2Config):
            model: PreTrainedModel = Dinov2Model(config)
        elif isinstance(config, (CLIPConfig, CLIPVisionConfig)):
            vision_config = config
            if isinstance(config, CLIPConfig):
                vision_config = config.vision_config
                vision_config.projection_dim = config.projection_dim
            model_cls = CLIPVisionModelWithProjection if clip_projection else CLIPVisionModel
            model = model_cls(vision_config)
        else:
            raise TypeError(f"unsupported config {type(config).__name__}; expected Dinov2Config or a CLIP config")
        size = image_size if image_size is not None else int(model.config.image_size)
        return cls(model, name=name, image_size=size, embedding_dim=embedding_dim).eval()

    # ------------------------------------------------------------------ forward
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float RGB in ``[0, 1]`` -> resized, clamped, normalised ``pixel_values``."""
        return preprocess_chips(images, self.image_size, self.pixel_mean, self.pixel_std, self.name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixel_values = self.preprocess(images).to(dtype=self.model.dtype)
        if self.family == "dinov2":  # Dinov2 always interpolates its position embeddings
            outputs = self.model(pixel_values=pixel_values)
            features = outputs.pooler_output
        else:
            interpolate = self.image_size != int(self.model.config.image_size)
            outputs = self.model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
            features = outputs.image_embeds if self.uses_clip_projection else outputs.pooler_output
        if self.projection is not None:
            features = self.projection(features)
        return features

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, family={self.family}, image_size={self.image_size}, "
            f"embedding_dim={self.embedding_dim}"
        )
