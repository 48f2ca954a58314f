"""DA-LoRA: domain-aware LoRA, ``K`` low-rank experts per layer mixed per sample by a domain router.

See :mod:`afr.adapters.dalora.model` (API), :mod:`afr.adapters.dalora.layer` (the batched expert mixing)
and :mod:`afr.adapters.dalora.router` (the router and the signal it reads).
"""
from afr.adapters.dalora.config import GATING_MODES, DaLoraSettings
from afr.adapters.dalora.layer import DaLoraConv2d, DaLoraLayer, DaLoraLinear
from afr.adapters.dalora.model import (
    DALORA_SETTINGS_NAME,
    DALORA_WEIGHTS_NAME,
    ROUTER_NAME,
    apply_dalora,
    dalora_state,
    gate_statistics,
    gate_summary,
    has_dalora,
    load_dalora,
    merge_dalora,
    route_by,
    router_logits_of,
    save_dalora,
    set_domains,
    set_gating,
)
from afr.adapters.dalora.router import DomainRouter, GateState, default_router_input
from afr.adapters.lora.model import trainable_parameters, trainable_report
from afr.adapters.registry import register_adapter

register_adapter("dalora", DaLoraSettings, apply=apply_dalora, merge=merge_dalora, save=save_dalora, load=load_dalora,
                 detect=has_dalora, label="DA-LoRA", domains=lambda model: model.dalora_settings.domains)

__all__ = [
    "DALORA_SETTINGS_NAME",
    "DALORA_WEIGHTS_NAME",
    "GATING_MODES",
    "ROUTER_NAME",
    "DaLoraConv2d",
    "DaLoraLayer",
    "DaLoraLinear",
    "DaLoraSettings",
    "DomainRouter",
    "GateState",
    "apply_dalora",
    "dalora_state",
    "default_router_input",
    "gate_statistics",
    "gate_summary",
    "has_dalora",
    "load_dalora",
    "merge_dalora",
    "route_by",
    "router_logits_of",
    "save_dalora",
    "set_domains",
    "set_gating",
    "trainable_parameters",
    "trainable_report",
]
