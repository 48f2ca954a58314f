"""LoRA on a backbone through peft: target resolution, injection, parameter counts, merging, saving.

The adapter is injected in place with peft's :func:`~peft.inject_adapter_in_model`, so the adapted model
*is* the backbone (same object, still a :class:`~afr.models.base.Backbone` with its ``name``,
``embedding_dim``, ``input_size``...), its targeted ``nn.Linear``/``nn.Conv2d`` layers replaced by peft
LoRA layers and every other parameter frozen. Modules a backbone lists in ``extra_trainable_modules``
(e.g. a new, randomly initialised projection layer) stay trainable and are saved with the adapter. (They
are not peft ``modules_to_save``: peft matches those by bare string suffix, so ``"projection"`` would also
catch DINOv2's ``patch_embeddings.projection``.)

Target names are matched by suffix on whole dotted components (``"query"`` matches
``encoder.layer.0.attention.attention.query`` but ``"proj"`` does not match ``q_proj``), and the leaf
names ``query``/``q_proj``, ``key``/``k_proj``, ``value``/``v_proj`` are aliases: transformers 4.x
names DINOv2's attention projections ``query``/``value``, 5.x ``q_proj``/``v_proj``, and either request
works on either model.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import peft
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from afr.adapters.lora.config import LoraSettings
from afr.adapters.registry import CONFIG_NAME, WEIGHTS_NAME, adapter_files
from afr.io import atomic_write_bytes, atomic_write_text
from afr.paths import MissingResourceError

__all__ = [
    "ADAPTABLE_TYPES",
    "ADAPTER_SETTINGS_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "AdapterMismatchError",
    "NoTargetMatchedError",
    "TARGET_ALIASES",
    "adaptable_module_names",
    "apply_lora",
    "has_lora",
    "load_adapter",
    "lora_disabled",
    "merge_lora",
    "read_adapter_tensors",
    "resolve_targets",
    "save_adapter",
    "trainable_parameters",
    "trainable_report",
]

#: layer types LoRA is applied to
ADAPTABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
#: interchangeable leaf names (transformers 4.x DINOv2 <-> 5.x / CLIP)
TARGET_ALIASES: dict[str, str] = {
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
    "q_proj": "query",
    "k_proj": "key",
    "v_proj": "value",
}
#: peft's adapter name; one adapter per backbone
ADAPTER_NAME = "default"
ADAPTER_WEIGHTS_NAME = WEIGHTS_NAME
#: every adapter's settings file (afr.adapters.registry); saves from before it (lora_settings.json) still load
ADAPTER_SETTINGS_NAME = CONFIG_NAME
ADAPTER_FORMAT = "afr-lora-1"


class NoTargetMatchedError(ValueError):
    """A requested LoRA target matches no ``nn.Linear``/``nn.Conv2d`` module of the model."""


class AdapterMismatchError(ValueError):
    """A saved adapter does not fit the backbone it is loaded into."""


def read_adapter_tensors(path: Path, what: str = "adapter") -> dict:
    """The tensors of a ``.safetensors`` adapter file; a truncated or damaged file is an
    :class:`AdapterMismatchError` naming it (safetensors' own error, e.g. ``incomplete metadata``, does not)."""
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' SafetensorError (truncated header or data), OSError
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise AdapterMismatchError(f"{path} is not a readable {what} weights file (truncated or corrupt): "
                                   f"{reason}") from error


def _lora_ranks(state: dict) -> list[int]:
    """The ranks of the LoRA A/B tensors in an adapter state (A: (r, in, ...), B: (out, r, ...))."""
    ranks = {int(value.shape[0]) for key, value in state.items() if ".lora_A." in key and value.ndim >= 2}
    ranks |= {int(value.shape[1]) for key, value in state.items() if ".lora_B." in key and value.ndim >= 2}
    return sorted(ranks)


def _short(error: BaseException, limit: int = 300) -> str:
    """One line of at most ``limit`` characters from a (possibly multi-kilobyte) torch/peft error message."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# ---------------------------------------------------------------------------------------------- targets
def adaptable_module_names(model: nn.Module) -> list[str]:
    """Full names of the modules LoRA can adapt (``nn.Linear``, ``nn.Conv2d``), in module order."""
    return [name for name, module in model.named_modules() if name and isinstance(module, ADAPTABLE_TYPES)]


def _variants(target: str) -> tuple[str, ...]:
    head, _, leaf = target.rpartition(".")
    alias = TARGET_ALIASES.get(leaf)
    if alias is None:
        return (target,)
    return (target, f"{head}.{alias}" if head else alias)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _summarise(names: Iterable[str]) -> list[str]:
    """Distinct name patterns, layer indices replaced by ``*`` (keeps error messages short)."""
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", name), None)
    return list(seen)


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear``/``nn.Conv2d`` modules that ``targets`` select, in module order.

    A target matches a module whose name equals it or ends with ``"." + target``; ``query``/``q_proj``,
    ``key``/``k_proj`` and ``value``/``v_proj`` are aliases (the last component is translated). Every
    requested target must match at least one module, otherwise :class:`NoTargetMatchedError` lists the
    unmatched targets and the adaptable modules that exist.
    """
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise NoTargetMatchedError(f"no LoRA targets requested for {type(model).__name__}")
    available = adaptable_module_names(model)
    chosen: set[str] = set()
    unmatched: list[str] = []
    for target in targets:
        hits = [name for name in available if any(_matches(name, v) for v in _variants(target))]
        if hits:
            chosen.update(hits)
        else:
            unmatched.append(target)
    if unmatched:
        label = getattr(model, "name", None) or type(model).__name__
        raise NoTargetMatchedError(
            f"LoRA target(s) {unmatched} match no nn.Linear/nn.Conv2d module of {label} "
            f"(matching is by name suffix; query/q_proj, key/k_proj, value/v_proj are aliases); "
            f"available: {_summarise(available)}"
        )
    return [name for name in available if name in chosen]


# ---------------------------------------------------------------------------------------------- inject
def has_lora(model: nn.Module) -> bool:
    """Whether peft LoRA layers are injected anywhere in ``model``."""
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def apply_lora(backbone: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Inject LoRA into ``backbone`` in place (peft ``inject_adapter_in_model``) and return it.

    Targets are ``settings.target_modules`` or, when None, ``backbone.default_lora_targets``, resolved
    with :func:`resolve_targets`. Afterwards only the LoRA matrices and the modules named in
    ``backbone.extra_trainable_modules`` require gradients; everything else is frozen. The returned object
    is ``backbone`` itself, carrying ``lora_settings`` (with the targets filled in), ``lora_module_names``
    and ``lora_extra_modules``.
    """
    settings = settings or LoraSettings()
    label = getattr(backbone, "name", None) or type(backbone).__name__
    if has_lora(backbone):
        raise ValueError(f"{label} already carries LoRA layers; merge_lora() it or start from a fresh backbone")
    targets = settings.target_modules
    if targets is None:
        targets = tuple(getattr(backbone, "default_lora_targets", ()) or ())
        if not targets:
            raise NoTargetMatchedError(
                f"{label} has no default_lora_targets; set LoraSettings.target_modules "
                f"(adaptable modules: {_summarise(adaptable_module_names(backbone))})"
            )
    names = resolve_targets(backbone, targets)
    extra = tuple(getattr(backbone, "extra_trainable_modules", ()) or ())
    overlap = [name for name in names if any(name == e or name.startswith(e + ".") for e in extra)]
    if overlap:
        raise ValueError(f"{label}: {overlap} are fully trainable extra modules and cannot also carry LoRA")
    extra_modules = [backbone.get_submodule(name) for name in extra]  # raises AttributeError naming a bad one
    model = inject_adapter_in_model(settings.to_peft_config(names), backbone, ADAPTER_NAME)
    for module in extra_modules:
        module.requires_grad_(True)
    model.lora_settings = settings.with_targets(targets)
    model.lora_module_names = tuple(names)
    model.lora_extra_modules = extra
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (shared tensors counted once)."""
    trainable = total = 0
    seen: set[int] = set()
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def trainable_report(model: nn.Module) -> str:
    """One line: ``trainable params: 12,288 || all params: 22,068,864 || trainable%: 0.0557``."""
    trainable, total = trainable_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {share:.4f}"


# ---------------------------------------------------------------------------------------------- merge
@contextmanager
def lora_disabled(model: nn.Module):
    """Inside the block ``model``'s LoRA layers add nothing (peft ``enable_adapters(False)``): the frozen backbone's
    function, without a copy; restored on exit."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    states = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield model
    finally:
        for layer, disabled in zip(layers, states):
            layer.enable_adapters(not disabled)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA branch into its base layer and remove the peft wrappers, in place.

    Returns the plain backbone (same object) whose Linear/Conv2d weights now include ``scaling * B @ A``.
    Parameters keep the ``requires_grad`` flags LoRA left (as peft's ``merge_and_unload``).
    """
    if not has_lora(model):
        label = getattr(model, "name", None) or type(model).__name__
        raise ValueError(f"{label} carries no LoRA layers to merge")
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            model.set_submodule(name, module.get_base_layer())
    for attribute in ("peft_config", "lora_settings", "lora_module_names", "lora_extra_modules"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    return model


# ---------------------------------------------------------------------------------------------- save/load
def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapter of a model from :func:`apply_lora` to ``directory`` and return it.

    Two files: ``adapter_model.safetensors`` (peft's ``get_peft_model_state_dict``: only the LoRA
    matrices, plus the state of the ``extra_trainable_modules`` under their own names) and
    ``adapter_config.json`` (``"type": "lora"``, the :class:`LoraSettings`, the adapted module names, the
    extra modules, the backbone name, the peft version; before adapter types it was ``lora_settings.json``,
    which :func:`load_adapter` still reads). Each file is written atomically (temporary file + rename).
    """
    settings = getattr(model, "lora_settings", None)
    if settings is None or not has_lora(model):
        raise ValueError("save_adapter needs a model returned by apply_lora() (no LoRA settings found)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False))
    extra = tuple(getattr(model, "lora_extra_modules", ()))
    for module_name in extra:
        for key, tensor in model.get_submodule(module_name).state_dict().items():
            full_key = f"{module_name}.{key}"
            if full_key in state:  # pragma: no cover - apply_lora forbids LoRA inside extra modules
                raise ValueError(f"adapter key {full_key} is both a LoRA and an extra-module tensor")
            state[full_key] = tensor
    tensors = {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}
    atomic_write_bytes(directory / ADAPTER_WEIGHTS_NAME, save_safetensors(tensors, metadata={"format": "pt"}))
    meta = {
        "type": "lora",
        "format": ADAPTER_FORMAT,
        "backbone": getattr(model, "name", type(model).__name__),
        "settings": settings.to_dict(),
        "module_names": list(model.lora_module_names),
        "extra_modules": list(extra),
        "peft_version": peft.__version__,
    }
    atomic_write_text(directory / ADAPTER_SETTINGS_NAME, json.dumps(meta, indent=2) + "\n")
    return directory


def load_adapter(backbone: nn.Module, directory: str | Path) -> nn.Module:
    """Inject the adapter saved in ``directory`` into ``backbone`` (in place) and return it.

    ``backbone`` must be the base model the adapter was trained on (same architecture and module names).
    Raises :class:`~afr.paths.MissingResourceError` naming a missing file and
    :class:`AdapterMismatchError` when the adapted modules or tensor shapes differ; after a shape
    mismatch the backbone already holds (uninitialised) LoRA layers and should be discarded.
    """
    directory = Path(directory)
    settings_path, weights_path = adapter_files(directory, "lora")  # also a save from before adapter types
    for path in (settings_path, weights_path):
        if not path.is_file():
            raise MissingResourceError(f"LoRA adapter file {path} not found (save_adapter() writes it)")
    try:
        meta = json.loads(settings_path.read_text())
        if meta.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
        settings = LoraSettings.from_dict(meta["settings"])
        saved_names = list(meta["module_names"])
        saved_extra = list(meta["extra_modules"])
    except (ValueError, KeyError, TypeError) as error:
        raise AdapterMismatchError(f"{settings_path} is not an AdaptFace LoRA settings file: {error}") from error
    label = getattr(backbone, "name", None) or type(backbone).__name__
    names = resolve_targets(backbone, settings.target_modules or ())
    if names != saved_names:
        raise AdapterMismatchError(
            f"adapter in {directory} (trained on {meta.get('backbone')!r}) adapts {_summarise(saved_names)} but "
            f"its targets select {_summarise(names)} in {label}"
        )
    extra = list(getattr(backbone, "extra_trainable_modules", ()) or ())
    if extra != saved_extra:
        raise AdapterMismatchError(
            f"adapter in {directory} carries extra trained modules {saved_extra} but {label} has {extra}"
        )
    state = read_adapter_tensors(weights_path, "LoRA adapter")
    ranks = _lora_ranks(state)
    if ranks and ranks != [settings.r]:  # one line, not peft's size mismatch of every layer
        raise AdapterMismatchError(
            f"LoRA adapter {weights_path} holds rank {', '.join(map(str, ranks))} tensors but its settings "
            f"{settings_path.name} (and the layers built from them) expect rank {settings.r}: the two files come "
            "from different adapters"
        )
    model = apply_lora(backbone, settings)
    prefixes = tuple(f"{name}." for name in extra)
    lora_state = {key: value for key, value in state.items() if not key.startswith(prefixes)}
    try:
        for name in extra:
            module_state = {key[len(name) + 1:]: value for key, value in state.items() if key.startswith(name + ".")}
            model.get_submodule(name).load_state_dict(module_state, strict=True)
        result = set_peft_model_state_dict(model, lora_state, adapter_name=ADAPTER_NAME)
    except RuntimeError as error:  # size mismatch, missing extra-module tensors
        raise AdapterMismatchError(f"{weights_path} does not fit {label}: {_short(error)}") from error
    marker = f".{ADAPTER_NAME}."
    missing = [key for key in result.missing_keys if marker in key]
    if result.unexpected_keys or missing:
        raise AdapterMismatchError(
            f"{weights_path} does not fit {label}: unexpected keys {list(result.unexpected_keys)[:5]}, "
            f"missing adapter keys {missing[:5]}"
        )
    return model
