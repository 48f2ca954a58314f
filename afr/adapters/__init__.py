"""Adapters for face backbones: one folder per method (:mod:`afr.adapters.lora`, :mod:`afr.adapters.dalora`),
each registered with :func:`register_adapter`, and the type-independent functions of :mod:`afr.adapters.registry`:

    from afr.adapters import apply_adapter, load_adapter, merge_adapter, save_adapter

    model = load_adapter(create_backbone("dlib-resnet29"), "results/adapters/lora_seed0")  # LoRA or DA-LoRA
    save_adapter(model, "runs/copy")   # adapter_config.json (with its "type") + adapter_model.safetensors

Importing this package is cheap (no torch, no peft); the method folders are imported when a type is first needed.
"""
from afr.adapters.registry import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterType,
    adapter_files,
    adapter_type,
    adapter_type_of,
    apply_adapter,
    has_adapter,
    load_adapter,
    merge_adapter,
    read_adapter,
    read_adapter_config,
    read_adapter_settings,
    register_adapter,
    registered_types,
    save_adapter,
    unregister_adapter,
    write_adapter,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterType",
    "adapter_files",
    "adapter_type",
    "adapter_type_of",
    "apply_adapter",
    "has_adapter",
    "load_adapter",
    "merge_adapter",
    "read_adapter",
    "read_adapter_config",
    "read_adapter_settings",
    "register_adapter",
    "registered_types",
    "save_adapter",
    "unregister_adapter",
    "write_adapter",
]
