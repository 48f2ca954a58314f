"""Domain classification loss for a domain-aware router: cross-entropy of the router's logits
against the expert that each sample's domain belongs to.

``domain_to_expert`` maps the dataset's domain codes (the second label of an embedded-benchmark
sample: ``domains.json`` names them, e.g. ``0 controlled, 1 wild, 2 thermal, 3 lowquality``) to
expert indices ``0 .. E-1``. Samples whose domain has no expert (say the test-only ``wild``) are left
out of the mean; a batch without any mapped sample gives a zero connected to ``router_logits``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["DomainClassificationLoss", "domain_classification_loss", "domain_targets"]


def domain_targets(domains: torch.Tensor, domain_to_expert: Mapping[int, int], num_experts: int) -> torch.Tensor:
    """The expert index of every sample's domain, ``-1`` where the domain has no expert; ``long (B,)``."""
    for code, expert in domain_to_expert.items():
        if not 0 <= int(expert) < num_experts:
            raise ValueError(f"domain {code!r} maps to expert {expert}, outside [0, {num_experts})")
    domains = domains.reshape(-1).long()
    targets = torch.full_like(domains, -1)
    for code, expert in domain_to_expert.items():
        targets = torch.where(domains == int(code), torch.full_like(domains, int(expert)), targets)
    return targets


def domain_classification_loss(
    router_logits: torch.Tensor, domains: torch.Tensor, domain_to_expert: Mapping[int, int]
) -> torch.Tensor:
    """Mean cross-entropy of ``router_logits`` ``(B, E)`` against the experts of ``domains`` ``(B,)``
    over the samples whose domain ``domain_to_expert`` maps; a scalar (at least float32) tensor."""
    if router_logits.ndim != 2:
        raise ValueError(f"router_logits must have shape (B, num_experts), got {tuple(router_logits.shape)}")
    if domains.reshape(-1).shape[0] != router_logits.shape[0]:
        raise ValueError(f"{router_logits.shape[0]} router logits but {domains.numel()} domains")
    targets = domain_targets(domains.to(router_logits.device), domain_to_expert, router_logits.shape[1])
    keep = targets >= 0
    logits = router_logits.to(torch.promote_types(router_logits.dtype, torch.float32))
    if not bool(keep.any()):
        return logits.sum() * 0.0  # zero, but backward still reaches the router
    return F.cross_entropy(logits[keep], targets[keep])


class DomainClassificationLoss(nn.Module):
    """:func:`domain_classification_loss` with a fixed ``domain_to_expert``: ``loss(router_logits, domains)``."""

    def __init__(self, domain_to_expert: Mapping[int, int]) -> None:
        super().__init__()
        self.domain_to_expert = {int(code): int(expert) for code, expert in domain_to_expert.items()}

    def forward(self, router_logits: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        return domain_classification_loss(router_logits, domains, self.domain_to_expert)

    def extra_repr(self) -> str:
        return f"domain_to_expert={self.domain_to_expert}"
