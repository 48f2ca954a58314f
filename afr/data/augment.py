"""Training-time augmentation for aligned face chips, as FRoundation trains: flip + RandAugment.

Built on kornia so it runs on batches, on the training device, without torchvision. RandAugment's
magnitude follows the torchvision/kornia scale of 0–30 (FRoundation: 4 operations, magnitude 16).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.augmentation import RandomHorizontalFlip
from kornia.augmentation.auto import RandAugment
from torch import nn


@dataclass(frozen=True)
class AugmentSettings:
    """What ``FaceAugment`` applies: a horizontal flip with ``flip_p`` and RandAugment(n, m)."""

    flip_p: float = 0.5
    randaugment_ops: int = 4
    randaugment_magnitude: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if self.randaugment_ops < 0:
            raise ValueError(f"randaugment_ops must be >= 0, got {self.randaugment_ops}")
        if self.randaugment_ops and not 0 < self.randaugment_magnitude < 30:
            raise ValueError(f"randaugment_magnitude must be in (0, 30), got {self.randaugment_magnitude}")


class FaceAugment(nn.Module):
    """Batch augmentation: ``(B, 3, H, W)`` floats in ``[0, 1]`` in, same shape and range out."""

    def __init__(self, settings: AugmentSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or AugmentSettings()
        ops: list[nn.Module] = [RandomHorizontalFlip(p=self.settings.flip_p)]
        if self.settings.randaugment_ops:
            ops.append(RandAugment(n=self.settings.randaugment_ops, m=self.settings.randaugment_magnitude))
        self.ops = nn.Sequential(*ops)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FaceAugment expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
        if not self.training:
            return images
        return self.ops(images).clamp_(0.0, 1.0)
