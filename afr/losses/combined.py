"""The training objective: ``L = L_margin + lambda_contrastive * L_contrastive + lambda_domain * L_domain``.

:func:`combine_losses` returns the total and its weighted parts by name (``margin``, ``contrastive``,
``domain``), ready to be a model output's ``loss`` and ``terms`` (the training engine logs each term
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

    def __post_init__(self) -> None:
        for name in ("contrastive", "domain"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LossWeights.{name} must be >= 0, got {getattr(self, name)!r}")

    def combine(
        self,
        margin: torch.Tensor,
        contrastive: torch.Tensor | None = None,
        domain: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)`` with these weights; see :func:`combine_losses`."""
        terms = {"margin": margin}
        if contrastive is not None:
            terms["contrastive"] = self.contrastive * contrastive
        if domain is not None:
            terms["domain"] = self.domain * domain
        total = terms["margin"]
        for name in ("contrastive", "domain"):
            if name in terms:
                total = total + terms[name]
        return total, terms


def combine_losses(
    margin: torch.Tensor,
    contrastive: torch.Tensor | None = None,
    domain: torch.Tensor | None = None,
    lambda_contrastive: float = 0.1,
    lambda_domain: float = 0.01,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, terms)``: ``terms`` holds the weighted parts that are given — ``{"margin": L_margin,
    "contrastive": lambda_contrastive * L_contrastive, "domain": lambda_domain * L_domain}`` — and
    ``total`` is their sum."""
    return LossWeights(lambda_contrastive, lambda_domain).combine(margin, contrastive, domain)
