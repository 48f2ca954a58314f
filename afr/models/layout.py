"""Memory layout of a backbone's weights: the same function, less CPU time."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fast_layout"]


def fast_layout(backbone: nn.Module) -> nn.Module:
    """``backbone`` (in place) with its conv weights in the channels-last layout: the same function, about a fifth
    less CPU time for the dlib ResNet's convolutions with oneDNN, forward and backward."""
    return backbone.to(memory_format=torch.channels_last)
