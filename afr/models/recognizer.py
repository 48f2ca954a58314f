"""Backbone + class centres + margin: the model trained with a margin softmax (CosFace / ArcFace)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from afr.losses.margin import create_margin
from afr.models.base import Backbone
from afr.models.heads import ClassCentres

__all__ = ["FaceRecognitionModel", "RecognizerOutput"]


@dataclass
class RecognizerOutput:
    """What :class:`FaceRecognitionModel` returns.

    Attributes:
        loss: the scalar training loss (the sum of ``terms``); None when no labels were given.
        logits: ``(B, num_classes)``; with labels the margin-adjusted scaled logits the loss used,
            without labels ``s * cos(theta)``.
        embeddings: the backbone's raw ``(B, embedding_dim)`` embeddings (not normalised).
        terms: the named parts of ``loss`` as they enter the sum (``{"margin": ...}``; later methods
            add e.g. ``"contrastive"`` and ``"domain"``), logged one by one by the training engine.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    embeddings: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class FaceRecognitionModel(nn.Module):
    """A backbone trained as a classifier over identities with a margin softmax (InsightFace style).

    Args:
        backbone: any :class:`~afr.models.base.Backbone` (possibly carrying LoRA).
        num_classes: number of training identities.
        margin: ``"cosface"`` (default, as FRoundation), ``"arcface"``, or a margin module
            ``(cosine, labels) -> logits``.
        s: logit scale.
        m: margin; None uses the margin's default (CosFace 0.35, ArcFace 0.5).

    ``forward(images, labels=None, domains=None)`` follows the training engine's
    ``model(images=..., labels=..., domains=...).loss`` convention. ``domains`` (one code per image,
    from packs that carry them) reaches the model with every batch; the plain margin model does not use
    it, domain-aware subclasses do.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        margin: str | nn.Module = "cosface",
        s: float = 64.0,
        m: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassCentres(int(backbone.embedding_dim), num_classes)
        self.margin = create_margin(margin, s=s, m=m) if isinstance(margin, str) else margin
        self.s = float(getattr(self.margin, "s", s))

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's raw embeddings ``(B, embedding_dim)``."""
        return self.backbone(images)

    def margin_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(margin logits, cross-entropy loss)`` of embeddings against the class centres."""
        logits = self.margin(self.head(embeddings), labels)
        return logits, F.cross_entropy(logits, labels.long())

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, domains: torch.Tensor | None = None
    ) -> RecognizerOutput:
        if domains is not None and domains.shape[:1] != images.shape[:1]:
            raise ValueError(f"{images.shape[0]} images but {domains.shape[0]} domain codes")
        embeddings = self.backbone(images)
        if labels is None:
            return RecognizerOutput(loss=None, logits=self.head(embeddings) * self.s, embeddings=embeddings)
        logits, loss = self.margin_loss(embeddings, labels)
        return RecognizerOutput(loss=loss, logits=logits, embeddings=embeddings, terms={"margin": loss})
