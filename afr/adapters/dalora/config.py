"""DA-LoRA hyper-parameters (:class:`DaLoraSettings`) and the domain-code -> expert mapping they define."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from afr.data.sources import DOMAINS

__all__ = ["GATING_MODES", "DaLoraSettings"]

#: how the per-sample expert weights are chosen (see :mod:`afr.adapters.dalora.model`)
GATING_MODES: tuple[str, ...] = ("classifier", "oracle", "uniform")
#: the embedded benchmark's training pack holds these domains (code 1, "wild", is test-only)
DEFAULT_EXPERT_DOMAINS: tuple[str, ...] = ("controlled", "thermal", "lowquality")


def _names(value: Any, field: str) -> tuple[str, ...]:
    """``value`` as a non-empty tuple of distinct, stripped, non-empty strings (ValueError otherwise)."""
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        raise ValueError(f"DaLoraSettings.{field} must be non-empty names, got {value!r}")
    items = tuple(item.strip() for item in items)
    if len(set(items)) != len(items):
        raise ValueError(f"DaLoraSettings.{field} must not repeat a name, got {value!r}")
    return items


@dataclass(frozen=True)
class DaLoraSettings:
    """How to adapt a backbone with DA-LoRA: ``K = len(domains)`` LoRA experts mixed per sample.

    Each targeted layer ``W`` computes ``W x + sum_k g_k(x) * scaling * B_k A_k x`` (plus
    ``scaling * B_s A_s x`` with ``shared_expert``), ``scaling = alpha / r`` (``alpha / sqrt(r)`` with
    ``use_rslora``), ``g(x)`` in the simplex chosen by ``gating``.

    Attributes:
        r: rank of each expert.
        alpha: LoRA alpha of each expert.
        domains: the experts' domain names, in expert order (``K = len(domains)``); each must be one of
            ``domain_codes``.
        domain_codes: the name of each dataset domain code (code ``c`` is ``domain_codes[c]``); default
            :data:`afr.data.sources.DOMAINS`, the codes of the embedded benchmark (a pack's
            ``domain_names``). A code whose name is not in ``domains`` (the embedded benchmark's
            ``wild``) has no expert: oracle gating refuses it (use ``classifier`` or ``uniform`` gating,
            or merge a chosen expert).
        dropout: dropout on the input of the low-rank branch (as LoRA's ``lora_dropout``).
        target_modules: module-name suffixes to adapt (LoRA's matching rules and aliases); None means the
            backbone's ``default_lora_targets`` minus any layer inside the router input module.
        router_input: name (or dotted suffix) of the frozen module whose output the router reads; None
            means the backbone's default (:func:`afr.adapters.dalora.router.default_router_input`).
        router_hidden: hidden width of the router MLP.
        gating: initial gating mode, one of :data:`GATING_MODES` (switchable after training).
        shared_expert: add one more rank-``r`` expert whose gate is always 1.
        use_rslora: rank-stabilised scaling ``alpha / sqrt(r)``.
        router_domains: the domains the router learns to tell apart when they are not the experts' (None: one
            router logit per expert). Only a one-expert adapter takes them: its single gate is 1 whatever the
            router says, so the router is then an auxiliary domain classifier on the frozen stem, trained by
            the domain loss and changing nothing else -- the ablation that isolates that loss. The one expert's
            name need not be a domain code then (oracle gating cannot route to it).
    """

    r: int = 8
    alpha: float = 8.0
    domains: tuple[str, ...] = DEFAULT_EXPERT_DOMAINS
    domain_codes: tuple[str, ...] = DOMAINS
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    router_input: str | None = None
    router_hidden: int = 64
    gating: str = "classifier"
    shared_expert: bool = False
    use_rslora: bool = False
    router_domains: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("r", "router_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DaLoraSettings.{name} must be a positive integer, got {value!r}")
        if not self.alpha > 0:
            raise ValueError(f"DaLoraSettings.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DaLoraSettings.dropout must be in [0, 1), got {self.dropout!r}")
        if self.gating not in GATING_MODES:
            raise ValueError(f"DaLoraSettings.gating must be one of {GATING_MODES}, got {self.gating!r}")
        domains = _names(self.domains, "domains")
        codes = _names(self.domain_codes, "domain_codes")
        if self.router_domains is not None:
            router = _names(self.router_domains, "router_domains")
            if len(domains) != 1:
                raise ValueError(f"DaLoraSettings.router_domains needs a single expert (its gate is then 1 whatever "
                                 f"the router says); got {len(domains)} experts {domains}")
            unknown = [name for name in router if name not in codes]
            if unknown:
                raise ValueError(f"DaLoraSettings.router_domains {unknown} are not among the domain_codes {codes}")
            object.__setattr__(self, "router_domains", router)
        unknown = [name for name in domains if name not in codes] if self.router_domains is None else []
        if unknown:
            raise ValueError(f"DaLoraSettings.domains {unknown} are not among the domain_codes {codes}")
        object.__setattr__(self, "domains", domains)
        object.__setattr__(self, "domain_codes", codes)
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", _names(self.target_modules, "target_modules"))
        if self.router_input is not None:
            if not isinstance(self.router_input, str) or not self.router_input.strip():
                raise ValueError(
                    f"DaLoraSettings.router_input must be None or a module name, got {self.router_input!r}"
                )
            object.__setattr__(self, "router_input", self.router_input.strip())

    @property
    def num_experts(self) -> int:
        """``K``, the number of domain experts (the shared expert not counted)."""
        return len(self.domains)

    @property
    def router_classes(self) -> tuple[str, ...]:
        """The domains of the router's logits, in logit order: ``router_domains``, else the experts' domains."""
        return self.router_domains or self.domains

    @property
    def scaling(self) -> float:
        """The factor on each expert's branch: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def expert_index(self, domain: int | str) -> int:
        """The expert of ``domain``: a domain name, or an ``int`` dataset code (index into ``domain_codes``).

        Raises ValueError for a code out of range and for a domain that has no expert.
        """
        if isinstance(domain, str):
            name = domain
        else:
            code = int(domain)
            if not 0 <= code < len(self.domain_codes):
                raise ValueError(f"domain code {code} is out of range: domain_codes are {self.domain_codes}")
            name = self.domain_codes[code]
        if name not in self.domains:
            raise ValueError(
                f"domain {name!r} has no DA-LoRA expert (experts: {self.domains}); oracle gating cannot route it: "
                "use classifier or uniform gating, or merge a chosen expert"
            )
        return self.domains.index(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DaLoraSettings":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DA-LoRA settings {unknown}; known: {sorted(known)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def replace(self, **changes: Any) -> "DaLoraSettings":
        """A validated copy with ``changes`` applied."""
        return DaLoraSettings(**{**asdict(self), **changes})
