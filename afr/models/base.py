"""The contract every face backbone in AdaptFace follows."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Backbone(nn.Module):
    """A face-embedding network.

    ``forward`` takes aligned face chips as a float tensor ``(B, 3, input_size, input_size)``, RGB in
    ``[0, 1]``, does its own resizing and normalisation, and returns the raw (not L2-normalised)
    embedding ``(B, embedding_dim)``.
    """

    name: str = "backbone"
    embedding_dim: int
    #: side of the aligned face chip the backbone consumes (112 for ViTs, 150 for dlib ResNet-29)
    input_size: int
    #: which alignment template the chips follow: "arcface" (112x112) or "dlib" (150x150 chip)
    alignment: str
    #: module-name suffixes that LoRA adapts by default
    default_lora_targets: ClassVar[tuple[str, ...]] = ()

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def preprocess_chips(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor, name: str) -> torch.Tensor:
    """The ViT backbones' input step: ``(B, 3, H, W)`` float RGB in ``[0, 1]`` resized to ``size`` (bicubic,
    ``align_corners=False``, anti-aliased when shrinking), clamped to ``[0, 1]`` (bicubic overshoots), then
    normalised with ``mean``/``std`` (``(1, 3, 1, 1)`` tensors). ``name`` labels the ValueError on a bad batch.

    Shared by the Hugging Face (:mod:`afr.models.vit`) and timm (:mod:`afr.models.timm_vit`) wrappers, so both
    feed their transformer the same pixels.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} expects a float (B, 3, H, W) RGB batch, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} expects float RGB in [0, 1], got dtype {images.dtype}")
    if images.shape[-2:] != (size, size):
        shrinking = images.shape[-2] > size or images.shape[-1] > size
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=shrinking)
        images = images.clamp(0.0, 1.0)
    return (images - mean) / std


def register_pixel_normalisation(module: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], name: str) -> None:
    """Check ``mean``/``std`` (3 values each, std > 0; ValueError labelled ``name``) and keep them on ``module`` as the
    non-persistent ``(1, 3, 1, 1)`` buffers ``pixel_mean`` / ``pixel_std`` that :func:`preprocess_chips` reads."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{name}: mean/std must hold 3 values each (std > 0), got {mean}, {std}")
    module.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)


def attach_projection(module: nn.Module, native_dim: int, embedding_dim: int | None, name: str) -> None:
    """The ViT wrappers' output size: ``native_dim``, or with another ``embedding_dim`` a new bias-free ``projection``
    Linear to it (random, so listed in ``extra_trainable_modules``: it stays trainable under LoRA)."""
    module.native_dim = int(native_dim)
    module.projection = None
    #: modules outside the transformer that are new (random) and must stay trainable under LoRA
    module.extra_trainable_modules = ()
    if embedding_dim is not None and int(embedding_dim) != module.native_dim:
        if int(embedding_dim) <= 0:
            raise ValueError(f"{name}: embedding_dim must be positive, got {embedding_dim}")
        module.projection = nn.Linear(module.native_dim, int(embedding_dim), bias=False)
        module.extra_trainable_modules = ("projection",)
    module.embedding_dim = int(embedding_dim) if embedding_dim is not None else module.native_dim

