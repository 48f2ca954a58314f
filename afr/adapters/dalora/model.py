"""DA-LoRA (domain-aware LoRA) on a backbone: injection, gating, merging, saving and loading.

:func:`apply_dalora` adapts a backbone in place, as :func:`afr.adapters.lora.apply_lora` does: the targeted
``nn.Linear``/``nn.Conv2d`` layers become :class:`~afr.adapters.dalora.layer.DaLoraLayer` s holding ``K``
low-rank experts (plus an optional always-on shared expert) stacked into one rank-``(K + S) r`` pair, a
:class:`~afr.adapters.dalora.router.DomainRouter` is registered as ``backbone.dalora_router`` and hooked on
a frozen early module (see :mod:`afr.adapters.dalora.router` for the choice of signal), and every base
parameter is frozen. One forward pass computes the router input, the gates and all adapted layers; the
returned object is still the backbone (``name``, ``embedding_dim``, ``input_size`` unchanged).

Gating (:func:`set_gating`, switchable at any time): ``classifier`` routes each sample by the softmax of
the router logits (train the router with a domain cross-entropy on ``dalora_state(backbone).router_logits``;
the gates are detached from it); ``oracle`` by its domain label, given before the forward with
:func:`set_domains` (dataset domain codes, as the RecordIO packs store them, or domain names); ``uniform``
gives every expert ``1 / K``. A domain without an expert (the embedded benchmark's ``wild``, which has no
training data) is refused by oracle gating with an error naming it: use classifier or uniform gating for
it, or :func:`merge_dalora` a chosen expert.

:func:`merge_dalora` folds one expert (and the shared expert) into the base weights -- exactly what oracle
gating for that domain computes -- and removes every trace of DA-LoRA, so inference costs the plain
backbone. :func:`save_dalora` / :func:`load_dalora` write and read ``adapter_model.safetensors`` (experts
and router) and ``adapter_config.json`` (``"type": "dalora"``; saves from before adapter types,
``dalora_model.safetensors`` + ``dalora_settings.json``, still load); :func:`afr.adapters.load_adapter` loads an
adapter of any registered type.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from afr.adapters.dalora.config import GATING_MODES, DaLoraSettings
from afr.adapters.dalora.layer import DaLoraLayer, wrap_layer
from afr.adapters.dalora.router import (
    DomainRouter,
    GateState,
    channel_statistics,
    default_router_input,
    resolve_module,
)
from afr.adapters.lora.config import LoraSettings
from afr.adapters.lora.model import (
    ADAPTER_FORMAT as LORA_FORMAT,
    AdapterMismatchError,
    NoTargetMatchedError,
    has_lora,
    read_adapter_tensors,
    resolve_targets,
)
from afr.adapters.registry import CONFIG_NAME, WEIGHTS_NAME, adapter_files
from afr.io import atomic_write_bytes, atomic_write_text
from afr.paths import MissingResourceError

__all__ = [
    "DALORA_SETTINGS_NAME",
    "DALORA_WEIGHTS_NAME",
    "ROUTER_NAME",
    "apply_dalora",
    "dalora_state",
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
]

log = logging.getLogger(__name__)

#: every adapter's files (afr.adapters.registry); saves from before them (dalora_*) still load
DALORA_WEIGHTS_NAME = WEIGHTS_NAME
DALORA_SETTINGS_NAME = CONFIG_NAME
DALORA_FORMAT = "afr-dalora-1"
#: attribute (submodule) name of the router on the adapted backbone
ROUTER_NAME = "dalora_router"
_ATTRIBUTES = ("dalora_settings", "dalora_module_names")


def _label(model: nn.Module) -> str:
    return getattr(model, "name", None) or type(model).__name__


def _inside(name: str, module_name: str) -> bool:
    return name == module_name or name.startswith(module_name + ".")


# ---------------------------------------------------------------------------------------------- inject
def has_dalora(model: nn.Module) -> bool:
    """Whether DA-LoRA layers are injected anywhere in ``model``."""
    return any(isinstance(module, DaLoraLayer) for module in model.modules())


def _router(model: nn.Module) -> DomainRouter:
    router = getattr(model, ROUTER_NAME, None)
    if not isinstance(router, DomainRouter):
        raise ValueError(f"{_label(model)} carries no DA-LoRA adapter (apply_dalora() or load_dalora() it)")
    return router


def dalora_state(model: nn.Module) -> GateState:
    """The backbone's :class:`~afr.adapters.dalora.router.GateState`: mode, domains, last logits and gates."""
    return _router(model).state


def router_logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The router's logits ``(B, K)`` for ``images``: the backbone's forward runs only up to the router input
    module (the frozen stem: one cheap partial pass) and the router reads its statistics. Gradients flow into the
    router; nothing else of the backbone runs and the gate state is left as it was."""
    router = _router(model)
    module = model.get_submodule(model.dalora_settings.router_input)
    state = router.state
    kept = (state.router_logits, state.gates, state.channel_gates)

    def stop(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        raise _ProbeStop(output)

    handle = module.register_forward_hook(stop)
    try:
        model(images)
    except _ProbeStop as seen:
        features = seen.args[0]
    else:
        raise ValueError(f"the DA-LoRA router input of {_label(model)} did not run in a forward pass")
    finally:
        handle.remove()
        state.router_logits, state.gates, state.channel_gates = kept
    return router(features)


@contextmanager
def route_by(model: nn.Module, images: torch.Tensor) -> Iterator[torch.Tensor]:
    """Within the block, the backbone's forward passes take their router logits -- hence their ``classifier``
    gates, and ``dalora_state(model).router_logits`` -- from ``images`` (:func:`router_logits_of`), another view
    of the batch they see, instead of from their own router input. A DA-LoRA router trained with
    ``router_view="clean"`` reads the flip-only view of each training image this way while the experts see its
    augmented view (:class:`~afr.models.domain_aware.DomainAwareRecognitionModel`). Yields the logits."""
    state = dalora_state(model)
    logits = router_logits_of(model, images)
    state.pinned_logits = logits
    try:
        yield logits
    finally:
        state.pinned_logits = None


class _ProbeStop(Exception):
    """Raised by the probe hook of :func:`_channels_of` to end its forward pass early."""


def _channels_of(backbone: nn.Module, module: nn.Module) -> int:
    """Channels ``C`` of ``module``'s output, from a forward of one blank chip stopped right after it.

    The probe runs in eval mode under ``torch.no_grad`` (no statistics or gradients change) and restores
    every module's training flag.
    """

    def stop(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        raise _ProbeStop(channel_statistics(output).shape[1] // 2)

    parameter = next(backbone.parameters())
    size = backbone.input_size
    probe = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
    modes = {submodule: submodule.training for submodule in backbone.modules()}
    handle = module.register_forward_hook(stop)
    try:
        with torch.no_grad():
            backbone.eval()(probe)
    except _ProbeStop as seen:
        return int(seen.args[0])
    finally:
        handle.remove()
        for submodule, training in modes.items():
            submodule.training = training
    raise ValueError(f"the DA-LoRA router input of {_label(backbone)} did not run in a forward pass")


def _target_names(backbone: nn.Module, settings: DaLoraSettings, router_input: str) -> list[str]:
    """The layers to adapt: explicit targets must lie outside the router input; defaults skip it."""
    if settings.target_modules is not None:
        names = resolve_targets(backbone, settings.target_modules)
        clash = [name for name in names if _inside(name, router_input)]
        if clash:
            raise ValueError(
                f"{_label(backbone)}: {clash} lie inside the DA-LoRA router input {router_input!r}, which must stay "
                "frozen (the router reads it before any expert runs)"
            )
        return names
    defaults = tuple(getattr(backbone, "default_lora_targets", ()) or ())
    candidates = resolve_targets(backbone, defaults) if defaults else []
    names = [name for name in candidates if not _inside(name, router_input)]
    if not names:
        raise NoTargetMatchedError(
            f"{_label(backbone)} has no default targets outside the router input {router_input!r}; "
            "set DaLoraSettings.target_modules"
        )
    return names


def apply_dalora(
    backbone: nn.Module, settings: DaLoraSettings | None = None, *, warm_start: str | Path | None = None
) -> nn.Module:
    """Inject DA-LoRA into ``backbone`` in place (see the module docstring) and return it.

    Targets are ``settings.target_modules`` (LoRA's suffix rules and q/v aliases) or the backbone's
    ``default_lora_targets`` minus the layers inside the router input module; the router reads
    ``settings.router_input`` or :func:`~afr.adapters.dalora.router.default_router_input`. Only the stacked
    A/B matrices and the router require gradients afterwards. The backbone carries ``dalora_settings``
    (targets and router input filled in as full module names) and ``dalora_module_names``.

    ``warm_start``: a LoRA adapter directory (:func:`afr.adapters.lora.save_adapter`) of the same rank whose
    update every expert starts from, so the adapted backbone first computes what the LoRA model does, in
    every gating mode: without a shared expert each expert is a copy of the LoRA pair (the gates sum to 1);
    with one, the shared expert takes the LoRA pair and the domain experts its ``A`` with ``B = 0``.
    """
    settings = settings or DaLoraSettings()
    label = _label(backbone)
    if has_dalora(backbone) or hasattr(backbone, ROUTER_NAME):
        raise ValueError(f"{label} already carries DA-LoRA; merge_dalora() it or start from a fresh backbone")
    if has_lora(backbone):
        raise ValueError(f"{label} carries peft LoRA layers; merge_lora() them before applying DA-LoRA")
    extra = tuple(getattr(backbone, "extra_trainable_modules", ()) or ())
    if extra:
        raise ValueError(
            f"{label} has new, untrained modules {list(extra)} that DA-LoRA would leave frozen; use the "
            "backbone's native embedding width"
        )
    router_input = resolve_module(backbone, settings.router_input or default_router_input(backbone))
    names = _target_names(backbone, settings, router_input)
    router_module = backbone.get_submodule(router_input)
    channels = _channels_of(backbone, router_module)

    backbone.requires_grad_(False)
    state = GateState(settings.num_experts, settings.r, settings.shared_expert, settings.gating)
    parameter = next(backbone.parameters())
    router = DomainRouter(channels, len(settings.router_classes), settings.router_hidden, state).to(parameter.device)
    options = dict(
        r=settings.r, num_experts=settings.num_experts, shared_expert=settings.shared_expert,
        scaling=settings.scaling, dropout=settings.dropout, state=state,
    )
    for name in names:
        backbone.set_submodule(name, wrap_layer(backbone.get_submodule(name), **options))
    backbone.add_module(ROUTER_NAME, router)
    backbone.register_forward_pre_hook(state.begin_forward)
    router_module.register_forward_hook(router.observe)
    backbone.dalora_settings = settings.replace(target_modules=tuple(names), router_input=router_input)
    backbone.dalora_module_names = tuple(names)
    if warm_start is not None:
        _warm_start(backbone, Path(warm_start))
    return backbone


def _layers(model: nn.Module) -> list[tuple[str, DaLoraLayer]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DaLoraLayer)]


def _warm_start(model: nn.Module, directory: Path) -> None:
    """Copy the LoRA adapter in ``directory`` into every expert (see :func:`apply_dalora`)."""
    meta_path, weights_path = adapter_files(directory, "lora")  # also a save from before adapter types
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise MissingResourceError(f"warm start: LoRA adapter file {path} not found (save_adapter() writes it)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != LORA_FORMAT:
        raise AdapterMismatchError(f"warm start: {meta_path} is not an AdaptFace LoRA settings file")
    lora = LoraSettings.from_dict(meta["settings"])
    settings: DaLoraSettings = model.dalora_settings
    if lora.r != settings.r:
        raise AdapterMismatchError(
            f"warm start needs a LoRA adapter of DA-LoRA's rank r={settings.r}; {directory} has r={lora.r}"
        )
    if meta["extra_modules"]:
        raise AdapterMismatchError(f"warm start: {directory} also trained modules {meta['extra_modules']}")
    saved = list(meta["module_names"])
    missing = [name for name in model.dalora_module_names if name not in saved]
    if missing:
        raise AdapterMismatchError(f"warm start: {directory} has no LoRA weights for {missing}")
    dropped = [name for name in saved if name not in model.dalora_module_names]
    if dropped:
        log.warning("warm start: LoRA weights of %s are not used (DA-LoRA does not adapt these layers)", dropped)
    state = read_adapter_tensors(weights_path, "LoRA adapter")
    ratio = lora.scaling / settings.scaling  # B rescaled so that each expert adds LoRA's exact update
    r, experts = settings.r, settings.num_experts
    with torch.no_grad():
        for name, layer in _layers(model):
            lora_a, lora_b = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] * ratio
            block_a, block_b = layer.lora_A.weight[:r], layer.lora_B.weight[:, :r]
            if lora_a.shape != block_a.shape or lora_b.shape != block_b.shape:
                raise AdapterMismatchError(
                    f"warm start: {name} has LoRA shapes {tuple(lora_a.shape)}/{tuple(lora_b.shape)}, "
                    f"an expert needs {tuple(block_a.shape)}/{tuple(block_b.shape)}"
                )
            layer.lora_A.weight.copy_(torch.cat([lora_a] * (experts + settings.shared_expert)))
            if settings.shared_expert:  # the shared block carries the update, the domain experts start at 0
                layer.lora_B.weight.zero_()
                layer.lora_B.weight[:, experts * r:] = lora_b
            else:
                layer.lora_B.weight.copy_(torch.cat([lora_b] * experts, dim=1))


# ---------------------------------------------------------------------------------------------- gating
def set_gating(model: nn.Module, mode: str) -> None:
    """Switch the gating mode (``classifier``, ``oracle`` or ``uniform``) of an adapted backbone."""
    if mode not in GATING_MODES:
        raise ValueError(f"gating must be one of {GATING_MODES}, got {mode!r}")
    dalora_state(model).mode = mode
    model.dalora_settings = model.dalora_settings.replace(gating=mode)


def set_domains(model: nn.Module, domains: torch.Tensor | np.ndarray | Sequence[int | str] | None) -> None:
    """Give the domain of every sample of the next batches, for oracle gating (None forgets them).

    ``domains`` holds dataset domain codes (integers indexing ``dalora_settings.domain_codes``, as the
    RecordIO packs' ``[identity, domain]`` labels) or domain names, one per image, or a single one that
    applies to every image of the following batches (e.g. while embedding a pack of one domain). They stay set until the next call; a
    domain without an expert raises ValueError naming it.
    """
    state = dalora_state(model)
    if domains is None:
        state.domains = None
        return
    settings: DaLoraSettings = model.dalora_settings
    values = domains
    if isinstance(domains, (torch.Tensor, np.ndarray)):
        values = torch.as_tensor(domains).reshape(-1).tolist()
    experts = [settings.expert_index(value) for value in values]
    state.domains = torch.tensor(experts, dtype=torch.long, device=next(_router(model).parameters()).device)


def gate_statistics(model: nn.Module) -> dict[str, float]:
    """Of the last forward: ``gate_entropy`` (mean over the batch, in ``[0, log K]`` nats) and
    ``gate_usage/<domain>`` (mean gate of each expert; they sum to 1), ready for logging."""
    gates = dalora_state(model).gates
    if gates is None:
        raise ValueError(f"{_label(model)} has no gates yet: run a forward pass first")
    return gate_summary(gates, model.dalora_settings.domains)


def gate_summary(gates: torch.Tensor, domains: Sequence[str]) -> dict[str, float]:
    """:func:`gate_statistics` of gates ``(N, K)`` (one row per image, experts in ``domains``' order)."""
    gates = gates.detach().float()
    entropy = -torch.special.xlogy(gates, gates).sum(dim=1).mean()
    usage = gates.mean(dim=0)
    return {"gate_entropy": float(entropy), **{f"gate_usage/{d}": float(u) for d, u in zip(domains, usage)}}


# ---------------------------------------------------------------------------------------------- merge
def _remove_hooks(model: nn.Module, router: DomainRouter) -> None:
    """Drop the backbone pre-hook and the router-input hook that :func:`apply_dalora` registered."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) in (router, router.state):
                    del hooks[key]


def merge_dalora(model: nn.Module, expert: int | str) -> nn.Module:
    """Fold ``expert`` (an expert index or a domain name) and the shared expert into the base weights.

    Every adapted layer's weight becomes ``W + scaling * (B_k A_k [+ B_s A_s])`` -- what oracle gating for
    that domain computes -- and the wrappers, the router and its hooks are removed: the returned object is
    the plain backbone (same object, same parameter count). Base parameters stay frozen.
    """
    router = _router(model)
    settings: DaLoraSettings = model.dalora_settings
    index = settings.domains.index(expert) if expert in settings.domains else expert
    if not isinstance(index, int) or not 0 <= index < settings.num_experts:
        raise ValueError(f"merge_dalora: {expert!r} is neither an expert index < {settings.num_experts} nor one "
                         f"of the domains {settings.domains}")
    for name, layer in _layers(model):
        model.set_submodule(name, layer.merge(index))
    _remove_hooks(model, router)
    delattr(model, ROUTER_NAME)
    for attribute in _ATTRIBUTES:
        delattr(model, attribute)
    return model


# ---------------------------------------------------------------------------------------------- save/load
def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors: every layer's stacked A/B and the router's state, under their module names."""
    tensors = {}
    for name, layer in _layers(model):
        tensors[f"{name}.lora_A.weight"] = layer.lora_A.weight
        tensors[f"{name}.lora_B.weight"] = layer.lora_B.weight
    for key, tensor in _router(model).state_dict().items():
        tensors[f"{ROUTER_NAME}.{key}"] = tensor
    return tensors


def save_dalora(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapter of a model from :func:`apply_dalora` to ``directory`` and return it.

    ``adapter_model.safetensors`` holds the stacked A/B of every layer and the router;
    ``adapter_config.json`` ``"type": "dalora"``, the :class:`DaLoraSettings` (current gating mode, full target
    and router-input names), the adapted module names and the backbone name. Both are written atomically.
    """
    tensors = {key: tensor.detach().cpu().contiguous() for key, tensor in _adapter_tensors(model).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / DALORA_WEIGHTS_NAME, save_safetensors(tensors, metadata={"format": "pt"}))
    meta = {
        "type": "dalora",
        "format": DALORA_FORMAT,
        "backbone": _label(model),
        "settings": model.dalora_settings.to_dict(),
        "module_names": list(model.dalora_module_names),
    }
    atomic_write_text(directory / DALORA_SETTINGS_NAME, json.dumps(meta, indent=2) + "\n")
    return directory


def load_dalora(backbone: nn.Module, directory: str | Path, gating: str | None = None) -> nn.Module:
    """Inject the DA-LoRA adapter saved in ``directory`` into ``backbone`` (in place) and return it.

    ``gating`` overrides the saved gating mode. Raises :class:`~afr.paths.MissingResourceError` naming a
    missing file and :class:`~afr.adapters.lora.AdapterMismatchError` when the backbone's modules or the
    tensor shapes differ from the saved ones (the backbone should then be discarded).
    """
    directory = Path(directory)
    settings_path, weights_path = adapter_files(directory, "dalora")  # also a save from before adapter types
    for path in (settings_path, weights_path):
        if not path.is_file():
            raise MissingResourceError(f"DA-LoRA adapter file {path} not found (save_dalora() writes it)")
    try:
        meta = json.loads(settings_path.read_text())
        if meta.get("format") != DALORA_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {DALORA_FORMAT!r}")
        settings = DaLoraSettings.from_dict(meta["settings"])
        saved_names = list(meta["module_names"])
    except (ValueError, KeyError, TypeError) as error:
        raise AdapterMismatchError(f"{settings_path} is not an AdaptFace DA-LoRA settings file: {error}") from error
    try:
        model = apply_dalora(backbone, settings)
    except ValueError as error:  # NoTargetMatchedError, unknown router input
        raise AdapterMismatchError(f"adapter in {directory} (trained on {meta.get('backbone')!r}): {error}") from error
    if list(model.dalora_module_names) != saved_names:
        raise AdapterMismatchError(f"adapter in {directory} adapts {saved_names}, {_label(model)} gives "
                                   f"{list(model.dalora_module_names)}")
    saved = read_adapter_tensors(weights_path, "DA-LoRA adapter")
    targets = _adapter_tensors(model)
    if set(saved) != set(targets):
        raise AdapterMismatchError(
            f"{weights_path} does not fit {_label(model)}: missing {sorted(set(targets) - set(saved))[:5]}, "
            f"unexpected {sorted(set(saved) - set(targets))[:5]}"
        )
    with torch.no_grad():
        for key, target in targets.items():
            if saved[key].shape != target.shape:
                raise AdapterMismatchError(
                    f"{weights_path}: {key} has shape {tuple(saved[key].shape)}, "
                    f"{_label(model)} needs {tuple(target.shape)}"
                )
            target.copy_(saved[key])
    if gating is not None:
        set_gating(model, gating)
    return model
