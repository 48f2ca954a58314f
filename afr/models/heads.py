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

    @torch.no_grad()
    def initialise_from_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Set each centre to the mean unit embedding of its class (classes without samples keep theirs).

        Starting from the class means of the frozen backbone, the margin loss begins near its optimum
        for the pretrained embedding instead of pulling the backbone towards random directions.
        """
        labels = labels.long().to(self.weight.device)
        if embeddings.shape != (len(labels), self.embedding_dim):
            raise ValueError(f"expected ({len(labels)}, {self.embedding_dim}) embeddings, got {tuple(embeddings.shape)}")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        units = F.normalize(embeddings.float().to(self.weight.device), dim=1)
        sums = torch.zeros_like(self.weight).index_add_(0, labels, units)
        seen = torch.bincount(labels, minlength=self.num_classes) > 0
        self.weight[seen] = F.normalize(sums[seen], dim=1).to(self.weight.dtype)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"ClassCentres expects embeddings of shape (B, {self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        return cosine.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}"
