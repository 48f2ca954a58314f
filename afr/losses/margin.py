"""Additive margins on cosine logits (CosFace, ArcFace) and the cross-entropy built on them.

Each margin maps the cosine logits of :class:`afr.models.heads.ClassCentres` and the labels to scaled
logits, following InsightFace's ``arcface_torch``:

* CosFace (Wang et al., 2018): target ``s * (cos(theta) - m)``, others ``s * cos(theta)``;
* ArcFace (Deng et al., 2019): target ``s * cos(theta + m)``, others ``s * cos(theta)``. Where
  ``theta + m`` would pass ``pi`` (``cos(theta) <= cos(pi - m)``), ``cos(theta + m)`` stops decreasing
  in ``theta``; InsightFace then uses ``cos(theta) - m * sin(m)`` instead (the CosFace-like fallback),
  or with ``easy_margin`` leaves targets with ``cos(theta) <= 0`` unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ArcFaceMargin", "CosFaceMargin", "MARGINS", "MarginLoss", "create_margin"]


def _check(cosine: torch.Tensor, labels: torch.Tensor, who: str) -> None:
    if cosine.ndim != 2:
        raise ValueError(f"{who} expects cosine logits of shape (B, num_classes), got {tuple(cosine.shape)}")
    if labels.ndim != 1 or labels.shape[0] != cosine.shape[0]:
        raise ValueError(f"{who} expects labels of shape ({cosine.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{who} expects integer class labels, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cosine.shape[1]):
        raise ValueError(
            f"{who}: labels must lie in [0, {cosine.shape[1]}), got range [{int(labels.min())}, {int(labels.max())}]"
        )


class CosFaceMargin(nn.Module):
    """Large-margin cosine: ``s * (cos - m)`` for the target class, ``s * cos`` for the others."""

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__()
        if s <= 0 or m < 0:
            raise ValueError(f"CosFaceMargin needs s > 0 and m >= 0, got s={s}, m={m}")
        self.s, self.m = float(s), float(m)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(cosine, labels, "CosFaceMargin")
        index = labels.long().unsqueeze(1)
        target = cosine.gather(1, index) - self.m
        return cosine.scatter(1, index, target) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"


class ArcFaceMargin(nn.Module):
    """Additive angular margin: ``s * cos(theta + m)`` for the target class, ``s * cos`` for the others.

    Where ``theta + m > pi`` the target logit is ``s * (cos - m * sin(m))`` (InsightFace's ``th``/``mm``
    fallback) or, with ``easy_margin=True``, targets with ``cos <= 0`` keep ``s * cos``.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__()
        if s <= 0 or not 0 <= m < math.pi / 2:
            raise ValueError(f"ArcFaceMargin needs s > 0 and 0 <= m < pi/2, got s={s}, m={m}")
        self.s, self.m, self.easy_margin = float(s), float(m), bool(easy_margin)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.threshold = math.cos(math.pi - m)  # cos(theta) at theta = pi - m
        self.fallback = math.sin(math.pi - m) * m  # = m * sin(m)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(cosine, labels, "ArcFaceMargin")
        index = labels.long().unsqueeze(1)
        target = cosine.gather(1, index)
        sine = torch.sqrt((1.0 - target * target).clamp_min(1e-12))
        with_margin = target * self.cos_m - sine * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            target = torch.where(target > 0, with_margin, target)
        else:
            target = torch.where(target > self.threshold, with_margin, target - self.fallback)
        return cosine.scatter(1, index, target) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, easy_margin={self.easy_margin}"


#: margin name -> (class, default m)
MARGINS: dict[str, tuple[type[nn.Module], float]] = {"cosface": (CosFaceMargin, 0.35), "arcface": (ArcFaceMargin, 0.5)}


def create_margin(name: str, s: float = 64.0, m: float | None = None) -> nn.Module:
    """``"cosface"`` or ``"arcface"`` with scale ``s`` and margin ``m`` (None: 0.35 / 0.5)."""
    key = name.strip().lower()
    if key not in MARGINS:
        raise ValueError(f"unknown margin {name!r}; available: {sorted(MARGINS)}")
    cls, default_m = MARGINS[key]
    return cls(s=s, m=default_m if m is None else m)


class MarginLoss(nn.Module):
    """Cross-entropy on the margin-adjusted, scaled logits: ``CE(margin(cosine, labels), labels)``."""

    def __init__(self, margin: nn.Module) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.margin(cosine, labels), labels.long())
