"""The prototype loss of few-shot episodes: class centres are the *prototypes* (Snell et al., 2017) of the support,
and a margin (CosFace by default in :mod:`afr.meta`) scores embeddings against them.

Used by MAML's inner and outer loops (:mod:`afr.meta.maml`) and by the few-shot adaptation of notebooks 04–05.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["prototype_margin_loss", "prototypes"]


def prototypes(embeddings: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """``(n_classes, D)``: the L2-normalised mean of the L2-normalised ``embeddings`` of each class.

    Row ``c`` is class ``c``'s centre; a class without any embedding raises ValueError.
    """
    one_hot = F.one_hot(labels.long(), n_classes).to(embeddings.dtype)
    counts = one_hot.sum(dim=0)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"prototypes: class(es) {missing} of {n_classes} have no embedding")
    means = one_hot.t() @ F.normalize(embeddings, dim=1) / counts.unsqueeze(1)
    return F.normalize(means, dim=1)


def prototype_margin_loss(embeddings: Tensor, labels: Tensor, centres: Tensor, margin: nn.Module) -> Tensor:
    """Cross-entropy of ``margin`` (e.g. :class:`~afr.losses.margin.CosFaceMargin`) applied to the cosine
    of the normalised ``embeddings`` with the normalised ``centres``.

    ``margin`` maps ``(cosine, labels)`` to scaled logits, as the margins of :mod:`afr.losses.margin` do;
    this is :class:`~afr.losses.margin.MarginLoss` on prototype centres.
    """
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(centres, dim=1).t()
    return F.cross_entropy(margin(cosine, labels), labels.long())
