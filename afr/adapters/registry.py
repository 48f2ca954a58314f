"""One registry of adapter types, in the style of peft: each method is one folder (``config.py`` /
``layer.py`` / ``model.py``) whose ``__init__.py`` registers it with one :func:`register_adapter` line.

Every adapter is saved in one format that carries its type (peft's ``adapter_config.json`` +
``adapter_model.safetensors``)::

    adapter_config.json        {"type": "lora", "settings": {...the type's settings.to_dict()...}, ...}
    adapter_model.safetensors  the trained tensors

so loading never guesses: :func:`load_adapter` reads ``type`` and calls that type's loader. The only other
place a type is inferred is :data:`LEGACY_FILES`: adapters saved before ``type`` existed (``lora_settings.json``
+ ``adapter_model.safetensors``, ``dalora_settings.json`` + ``dalora_model.safetensors``, e.g. the committed
``results/adapters/*/``) are recognised by their settings file's name there, and nowhere else.

The dispatch functions:

* :func:`apply_adapter` ``(backbone, settings)``: by the class of ``settings``;
* :func:`merge_adapter` ``(model, domain=None)``, :func:`save_adapter` ``(model, directory)``: by the adapter the
  model carries (:func:`adapter_type_of`, each type's ``detect``);
* :func:`load_adapter` ``(backbone, directory, **options)``: by the saved ``type``.

The adapter folders inside :mod:`afr.adapters` are imported (and so registered) the first time a registered type
is needed; this module itself imports neither torch nor peft, so reading an adapter's type or settings JSON
(:func:`read_adapter_config`) stays cheap.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afr.paths import MissingResourceError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

__all__ = [
    "CENTRE_NAME",
    "CONFIG_NAME",
    "LEGACY_FILES",
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

#: the settings file of every adapter: JSON with the adapter's ``type`` and its ``settings``
CONFIG_NAME = "adapter_config.json"
#: the tensors of every adapter
WEIGHTS_NAME = "adapter_model.safetensors"
#: the embedding centre of an adapter trained on a centred backbone (:mod:`afr.models.centring`); absent otherwise
CENTRE_NAME = "embedding_centre.safetensors"
#: type -> (settings file, weights file) of adapters saved before the ``type`` field existed; read only, never
#: written, never extended (a new type is saved with ``type`` from the start)
LEGACY_FILES: dict[str, tuple[str, str]] = {
    "lora": ("lora_settings.json", "adapter_model.safetensors"),
    "dalora": ("dalora_settings.json", "dalora_model.safetensors"),
}


@dataclass(frozen=True)
class AdapterType:
    """One registered adapter method (see :func:`register_adapter` for the fields)."""

    name: str
    settings_class: type
    apply: Callable[..., nn.Module]
    merge: Callable[..., nn.Module]
    save: Callable[[nn.Module, Path], Path]
    load: Callable[..., nn.Module]
    detect: Callable[[nn.Module], bool]
    label: str
    domains: Callable[[nn.Module], Any] | None = None

    @property
    def per_domain(self) -> bool:
        """Whether the adapter holds weights per domain, so that merging needs a domain."""
        return self.domains is not None


_TYPES: dict[str, AdapterType] = {}
_BUILTINS_IMPORTED = False


def register_adapter(
    type_name: str,
    settings_class: type,
    *,
    apply: Callable[..., nn.Module],
    merge: Callable[..., nn.Module],
    save: Callable[[nn.Module, Path], Path],
    load: Callable[..., nn.Module],
    detect: Callable[[nn.Module], bool],
    label: str | None = None,
    domains: Callable[[nn.Module], Any] | None = None,
    replace: bool = False,
) -> AdapterType:
    """Register the adapter method ``type_name`` and return its :class:`AdapterType`.

    Args:
        type_name: the ``type`` written into every saved ``adapter_config.json`` of this method.
        settings_class: its settings dataclass (``to_dict()`` / ``from_dict()``); :func:`apply_adapter`
            picks the type by it.
        apply: ``apply(backbone, settings, **options) -> model`` (in place).
        merge: ``merge(model) -> plain backbone``, or ``merge(model, domain)`` for a per-domain type.
        save: ``save(model, directory) -> directory``; writes ``adapter_config.json`` with ``"type": type_name``
            (e.g. through :func:`write_adapter`).
        load: ``load(backbone, directory, **options) -> model``.
        detect: ``detect(model) -> bool``, whether ``model`` carries this adapter.
        label: the name shown to people (default ``type_name``).
        domains: for an adapter with weights per domain (DA-LoRA's experts): ``domains(model)``, the domains it
            can merge; None for an adapter that merges into one set of weights.
        replace: replace an earlier registration of ``type_name`` instead of refusing it.
    """
    if not isinstance(type_name, str) or not type_name.strip():
        raise ValueError(f"adapter type must be a non-empty name, got {type_name!r}")
    if type_name in _TYPES and not replace:
        raise ValueError(f"adapter type {type_name!r} is already registered (replace=True replaces it)")
    taken = [t.name for t in _TYPES.values() if t.settings_class is settings_class and t.name != type_name]
    if taken:
        raise ValueError(f"{settings_class.__name__} already belongs to the adapter type {taken[0]!r}")
    entry = AdapterType(type_name, settings_class, apply, merge, save, load, detect, label or type_name, domains)
    _TYPES[type_name] = entry
    return entry


def unregister_adapter(type_name: str) -> None:
    """Forget the adapter type ``type_name`` (tests; a plug-in removing itself)."""
    _TYPES.pop(type_name, None)


def _import_builtins() -> None:
    """Import every adapter folder of :mod:`afr.adapters` once; each registers itself on import."""
    global _BUILTINS_IMPORTED
    if _BUILTINS_IMPORTED:
        return
    _BUILTINS_IMPORTED = True
    import afr.adapters as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg:
            importlib.import_module(f"{package.__name__}.{module.name}")


def registered_types() -> dict[str, AdapterType]:
    """Every registered adapter type, by name (built-in folders imported first)."""
    _import_builtins()
    return dict(_TYPES)


def adapter_type(type_name: str) -> AdapterType:
    """The registered type ``type_name``; ValueError naming the registered ones otherwise."""
    types = registered_types()
    if type_name not in types:
        raise ValueError(f"unknown adapter type {type_name!r}; registered: {sorted(types)}")
    return types[type_name]


def adapter_type_of(model: nn.Module) -> AdapterType | None:
    """The type of the adapter ``model`` carries (by each type's ``detect``), or None for a plain model."""
    found = [entry for entry in registered_types().values() if entry.detect(model)]
    if len(found) > 1:
        raise ValueError(f"{_label(model)} carries adapters of several types {[e.name for e in found]}")
    return found[0] if found else None


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries an adapter of any registered type."""
    return adapter_type_of(model) is not None


def _label(model: nn.Module) -> str:
    return getattr(model, "name", None) or type(model).__name__


def _carried(model: nn.Module, action: str) -> AdapterType:
    entry = adapter_type_of(model)
    if entry is None:
        raise ValueError(f"{_label(model)} carries no adapter to {action} (registered types: "
                         f"{sorted(registered_types())})")
    return entry


# ------------------------------------------------------------------------------------------------ dispatch
def apply_adapter(backbone: nn.Module, settings: Any, **options: Any) -> nn.Module:
    """Adapt ``backbone`` in place with the type whose settings class ``settings`` is (``options`` go to it)."""
    for entry in registered_types().values():
        if isinstance(settings, entry.settings_class):
            return entry.apply(backbone, settings, **options)
    raise ValueError(f"{type(settings).__name__} is the settings class of no registered adapter type "
                     f"{sorted(registered_types())}")


def merge_adapter(model: nn.Module, domain: str | int | None = None) -> nn.Module:
    """Fold the adapter ``model`` carries into its weights and return the plain backbone (same object).

    ``domain`` names the domain whose weights are merged for a per-domain adapter (DA-LoRA's expert), and must
    be None for any other.
    """
    entry = _carried(model, "merge")
    if not entry.per_domain:
        if domain is not None:
            raise ValueError(f"domain {domain!r} applies to per-domain adapters only; {_label(model)} carries a "
                             f"{entry.label} adapter")
        return entry.merge(model)
    if domain is None:
        raise ValueError(f"{_label(model)} carries a {entry.label} adapter: name the domain to merge, one of "
                         f"{list(entry.domains(model))}")
    return entry.merge(model, domain)


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Save the adapter ``model`` carries to ``directory`` with its type's saver; returns the directory.

    The saved ``adapter_config.json`` is checked to record the type (ValueError otherwise). A centred backbone's
    centre (:mod:`afr.models.centring`) goes beside it, to :data:`CENTRE_NAME`: the adapter was trained on centred
    embeddings and means nothing without them."""
    from afr.models.centring import embedding_centre

    entry = _carried(model, "save")
    directory = Path(entry.save(model, Path(directory)) or directory)
    saved = read_adapter_config(directory).get("type")
    if saved != entry.name:
        raise ValueError(f"the {entry.label} saver wrote {directory / CONFIG_NAME} with type {saved!r}, "
                         f"not {entry.name!r}")
    centre = embedding_centre(model)
    if centre is not None:
        from safetensors.torch import save as save_safetensors

        from afr.io import atomic_write_bytes

        atomic_write_bytes(directory / CENTRE_NAME, save_safetensors({"centre": centre.detach().cpu().contiguous()}))
    return directory


def load_adapter(backbone: nn.Module, directory: str | Path, **options: Any) -> nn.Module:
    """Load the adapter saved in ``directory`` onto ``backbone`` (in place), by the type its settings record.

    ``options`` go to the type's loader (e.g. DA-LoRA's ``gating``); an option a type's loader does not take
    is left out (LoRA has no gating), so one call loads any type. A saved embedding centre (:data:`CENTRE_NAME`)
    centres the backbone too.
    """
    entry = adapter_type(read_adapter_config(directory)["type"])
    parameters = inspect.signature(entry.load).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        options = {key: value for key, value in options.items() if key in parameters}
    model = entry.load(backbone, Path(directory), **options)
    centre_path = Path(directory) / CENTRE_NAME
    if centre_path.is_file():
        from safetensors.torch import load_file

        from afr.models.centring import centre_embeddings

        try:
            centre = load_file(str(centre_path))["centre"]
        except Exception as error:  # safetensors' own errors do not name the file
            raise ValueError(f"{centre_path} is not a saved embedding centre ({type(error).__name__}: {error}); "
                             "save the adapter again") from error
        centre_embeddings(model, centre)
    return model


# ------------------------------------------------------------------------------------------------ files
def adapter_files(directory: str | Path, type_name: str | None = None) -> tuple[Path, Path]:
    """``(settings file, weights file)`` of the adapter in ``directory``.

    ``adapter_config.json`` / ``adapter_model.safetensors`` when the config exists; otherwise the files of a
    legacy save (:data:`LEGACY_FILES`, of ``type_name`` only when given) when its settings file exists;
    otherwise the current names, so that a loader's missing-file error names the file it expects.
    """
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        for legacy_type, (settings_name, weights_name) in LEGACY_FILES.items():
            if type_name in (None, legacy_type) and (directory / settings_name).is_file():
                return directory / settings_name, directory / weights_name
    return directory / CONFIG_NAME, directory / WEIGHTS_NAME


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The saved settings JSON of the adapter in ``directory``, with its ``type`` (inferred for legacy saves).

    Raises :class:`~afr.paths.MissingResourceError` (a ``FileNotFoundError``) when ``directory`` holds no
    adapter, ValueError for a settings file without a type."""
    directory = Path(directory)
    settings_path, _ = adapter_files(directory)
    if not settings_path.is_file():
        legacy = " / ".join(settings for settings, _ in LEGACY_FILES.values())
        raise MissingResourceError(f"no adapter in {directory}: neither {CONFIG_NAME} nor a saved-before-types "
                                   f"{legacy} found")
    try:
        config = json.loads(settings_path.read_text())
    except ValueError as error:
        raise ValueError(f"{settings_path} is not an adapter settings file: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{settings_path} is not an adapter settings file (no JSON object)")
    if settings_path.name == CONFIG_NAME:
        if not isinstance(config.get("type"), str):
            raise ValueError(f"{settings_path} records no adapter type")
        return config
    legacy_type = next(name for name, (settings, _) in LEGACY_FILES.items() if settings == settings_path.name)
    return {**config, "type": legacy_type}


def read_adapter_settings(directory: str | Path) -> Any:
    """The saved adapter's settings, as its type's settings class (``from_dict`` of the JSON's ``settings``)."""
    config = read_adapter_config(directory)
    return adapter_type(config["type"]).settings_class.from_dict(config["settings"])


def write_adapter(directory: str | Path, type_name: str, settings: Mapping[str, Any],
                  tensors: Mapping[str, Tensor], **extra: Any) -> Path:
    """Write an adapter in the common format: ``adapter_model.safetensors`` (``tensors``) and
    ``adapter_config.json`` (``{"type": type_name, "settings": settings, **extra}``), each atomically."""
    from safetensors.torch import save as save_safetensors

    from afr.io import atomic_write_bytes, atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = {key: tensor.detach().cpu().contiguous() for key, tensor in tensors.items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save_safetensors(data, metadata={"format": "pt"}))
    config = {"type": type_name, "settings": dict(settings), **extra}
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory


def read_adapter(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, tensors)`` of the adapter in ``directory`` (:func:`read_adapter_config` and its weights)."""
    from safetensors.torch import load_file

    config = read_adapter_config(directory)
    _, weights_path = adapter_files(directory)
    if not weights_path.is_file():
        raise MissingResourceError(f"adapter weights {weights_path} not found")
    return config, load_file(str(weights_path))
