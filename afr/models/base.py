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
