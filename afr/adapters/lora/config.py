"""LoRA hyper-parameters (:class:`LoraSettings`) and their translation to a peft ``LoraConfig``."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

from peft import LoraConfig

__all__ = ["LoraSettings"]


@dataclass(frozen=True)
class LoraSettings:
    """How to adapt a backbone with LoRA (Hu et al., 2021), as peft implements it.

    Each targeted ``nn.Linear``/``nn.Conv2d`` ``W`` becomes ``W x + scaling * B(A(x))`` with ``A``
    of rank ``r`` (for a conv: ``A`` is a conv with ``W``'s kernel/stride/padding and ``r`` output
    channels, ``B`` a 1x1 conv), ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).

    Attributes:
        r: LoRA rank.
        alpha: LoRA alpha (peft's ``lora_alpha``).
        dropout: dropout on the LoRA branch input (peft's ``lora_dropout``).
        use_rslora: rank-stabilised scaling ``alpha / sqrt(r)``.
        target_modules: module-name suffixes to adapt (e.g. ``("query", "value")``); None means the
            backbone's ``default_lora_targets``. ``query``/``q_proj``, ``key``/``k_proj`` and
            ``value``/``v_proj`` are interchangeable (see :func:`afr.adapters.lora.resolve_targets`).
        init_lora_weights: peft's initialisation; ``True`` (default) draws ``A`` Kaiming-uniform and
            sets ``B`` to zero, so a freshly adapted backbone computes exactly what the base one does.
    """

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    target_modules: tuple[str, ...] | None = None
    init_lora_weights: bool | str = True

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraSettings.r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoraSettings.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if targets is not None:
            if isinstance(targets, str):
                targets = (targets,)
            targets = tuple(targets)
            if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
                raise ValueError(
                    f"LoraSettings.target_modules must be None or non-empty module names, got {self.target_modules!r}"
                )
            object.__setattr__(self, "target_modules", tuple(t.strip() for t in targets))

    @property
    def scaling(self) -> float:
        """The factor on the LoRA branch: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def square(cls, rank: int, targets: Sequence[str] | None = None) -> "LoraSettings":
        """Rank ``rank`` with ``alpha = rank`` (scaling 1, the project's LoRA everywhere), on ``targets`` (None: the
        backbone's ``default_lora_targets``)."""
        return cls(r=rank, alpha=float(rank), target_modules=None if targets is None else tuple(targets))

    def with_targets(self, targets: Sequence[str]) -> "LoraSettings":
        """A copy with ``target_modules`` set to ``targets``."""
        return LoraSettings(**{**self.to_dict(), "target_modules": tuple(targets)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``target_modules`` as a list or None)."""
        data = asdict(self)
        if data["target_modules"] is not None:
            data["target_modules"] = list(data["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraSettings":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoRA settings {unknown}; known: {sorted(known)}")
        data = dict(data)
        if data.get("target_modules") is not None:
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)

    def to_peft_config(self, module_names: Sequence[str]) -> LoraConfig:
        """A peft ``LoraConfig`` adapting exactly ``module_names`` (full dotted names).

        The names are passed as an anchored regular expression, so peft's suffix matching cannot reach
        any other module.
        """
        if not module_names:
            raise ValueError("to_peft_config needs at least one module name")
        pattern = "^(" + "|".join(re.escape(name) for name in module_names) + ")$"
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            use_rslora=self.use_rslora,
            target_modules=pattern,
            init_lora_weights=self.init_lora_weights,
            bias="none",
        )

