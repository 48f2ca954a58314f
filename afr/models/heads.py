"""Class-centre layer for margin-based face-recognition training (InsightFace style).

The layer only computes cosine similarities; the margin (CosFace, ArcFace) and the scale are applied
separately by :mod:`afr.losses.margin`, as in InsightFace's ``arcface_torch``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassCentres"]


class ClassCentres(nn.Module):
    """``num_classes`` learnable class centres on the unit sphere.

    ``forward(embeddings)`` returns the cosine logits ``cos(theta_ij) = <e_i/|e_i|, w_j/|w_j|>`` of shape
    ``(B, num_classes)``, clamped to ``[-1, 1]``. The weight ``(num_classes, embedding_dim)`` is drawn
    from ``N(0, 0.01^2)`` as in InsightFace; only its direction matters.
    """

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        if embedding_dim <= 0 or num_classes <= 0:
            raise ValueError(f"ClassCentres needs positive sizes, got embedding_dim={embedding_dim}, "
                             f"num_classes={num_classes}")
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=0.01)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"ClassCentres expects embeddings of shape (B, {self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        return cosine.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}"
