"""LoRA adapters for face backbones, built on peft (see :mod:`afr.adapters.lora.model`)."""
from afr.adapters.lora.config import LoraSettings
from afr.adapters.lora.model import (
    ADAPTER_SETTINGS_NAME,
    ADAPTER_WEIGHTS_NAME,
    TARGET_ALIASES,
    AdapterMismatchError,
    NoTargetMatchedError,
    adaptable_module_names,
    apply_lora,
    has_lora,
    load_adapter,
    lora_disabled,
    merge_lora,
    resolve_targets,
    save_adapter,
    trainable_parameters,
    trainable_report,
)
from afr.adapters.registry import register_adapter

register_adapter("lora", LoraSettings, apply=apply_lora, merge=merge_lora, save=save_adapter, load=load_adapter,
                 detect=has_lora, label="LoRA")

__all__ = [
    "ADAPTER_SETTINGS_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "TARGET_ALIASES",
    "AdapterMismatchError",
    "LoraSettings",
    "NoTargetMatchedError",
    "adaptable_module_names",
    "apply_lora",
    "has_lora",
    "load_adapter",
    "lora_disabled",
    "merge_lora",
    "resolve_targets",
    "save_adapter",
    "trainable_parameters",
    "trainable_report",
]
