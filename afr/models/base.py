"""The contract every face backbone in AdaptFace follows."""
from __future__ import annotations

from typing import ClassVar

import torch
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
