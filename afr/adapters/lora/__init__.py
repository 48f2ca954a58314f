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
    merge_lora,
    resolve_targets,
    save_adapter,
    trainable_parameters,
    trainable_report,
)

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
    "merge_lora",
    "resolve_targets",
    "save_adapter",
    "trainable_parameters",
    "trainable_report",
]
