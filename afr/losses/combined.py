"""The training objective: ``L = L_margin + lambda_contrastive * L_contrastive + lambda_domain * L_domain``
(+ ``lambda_distill * L_distill`` for the feature-distillation baseline, notebook 03's ``lora-distill``).

:func:`combine_losses` returns the total and its weighted parts by name (``margin``, ``contrastive``,
``domain``, ``distill``), ready to be a model output's ``loss`` and ``terms`` (the training engine logs each term
as ``train_<name>``; the terms of the weighted parts sum to the loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LossWeights", "combine_losses"]


@dataclass(frozen=True)
class LossWeights:
    """The weights of the auxiliary terms (defaults: 0.1 for the contrastive, 0.01 for the domain loss)."""

    contrastive: float = 0.1
    domain: float = 0.01
    distill: float = 0.0

    def __post_init__(self) -> None:
        for name in ("contrastive", "domain", "distill"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LossWeights.{name} must be >= 0, got {getattr(self, name)!r}")

    def combine(
        self,
        margin: torch.Tensor,
        contrastive: torch.Tensor | None = None,
        domain: torch.Tensor | None = None,
        distill: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)`` with these weights; see :func:`combine_losses`."""
        terms = {"margin": margin}
        if contrastive is not None:
            terms["contrastive"] = self.contrastive * contrastive
        if domain is not None:
            terms["domain"] = self.domain * domain
        if distill is not None:
            terms["distill"] = self.distill * distill
        total = terms["margin"]
        for name in ("contrastive", "domain", "distill"):
            if name in terms:
                total = total + terms[name]
        return total, terms


def combine_losses(
    margin: torch.Tensor,
    contrastive: torch.Tensor | None = None,
    domain: torch.Tensor | None = None,
    lambda_contrastive: float = 0.1,
    lambda_domain: float = 0.01,
    distill: torch.Tensor | None = None,
    lambda_distill: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, terms)``: ``terms`` holds the weighted parts that are given — ``{"margin": L_margin,
    "contrastive": lambda_contrastive * L_contrastive, "domain": lambda_domain * L_domain}`` — and
    ``total`` is their sum."""
    return LossWeights(lambda_contrastive, lambda_domain, lambda_distill).combine(margin, contrastive, domain, distill)
