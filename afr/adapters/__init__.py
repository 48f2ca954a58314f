"""Adapters for face backbones: one folder per method (:mod:`afr.adapters.lora`, :mod:`afr.adapters.dalora`),
each registered with :func:`register_adapter`, and the type-independent functions of :mod:`afr.adapters.registry`:

    from afr.adapters import apply_adapter, load_adapter, merge_adapter, save_adapter

    model = load_adapter(create_backbone("dlib-resnet29"), "results/adapters/lora_seed0")  # LoRA or DA-LoRA
    save_adapter(model, "runs/copy")   # adapter_config.json (with its "type") + adapter_model.safetensors

Importing this package is cheap (no torch, no peft); the method folders are imported when a type is first needed.
"""
from afr.adapters import registry as _registry
from afr.adapters.registry import *  # noqa: F401,F403 - the package's names are the registry's (its __all__)

__all__ = list(_registry.__all__)
