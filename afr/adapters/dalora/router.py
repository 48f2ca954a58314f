"""The DA-LoRA router: a small domain classifier fed by a frozen early module of the same forward pass.

Which signal, and why
---------------------
The router reads the output of one *frozen* module that runs before the first adapted layer, through a
forward hook, and reduces it to per-channel mean and standard deviation over the spatial positions
(conv maps: over H, W) or tokens (ViT: over the token axis):

* ``dlib-resnet29``: the stem ``conv32_down`` (7x7 conv stride 2 + affine + ReLU, 32 channels). DA-LoRA
  does not adapt the stem, so its output is identical under every expert.
* DINOv2 / CLIP (:class:`~afr.models.vit.HFViTBackbone`): the ``embeddings`` module (patch embedding +
  CLS token + position embeddings), i.e. the tokens entering the first attention block, whose q/v are the
  first adapted layers. The timm ViTs (:class:`~afr.models.timm_vit.TimmViTBackbone`) name the same tokens
  themselves (``default_router_input = "model.pos_drop"``).

The domains DA-LoRA separates (controlled visible light, thermal LWIR, low quality: down-sampled, blurred,
JPEG-compressed) differ in *low-level* image statistics: thermal chips have another intensity and
contrast distribution across filters, low-quality chips lose the energy of the high-frequency filters.
First-layer filter responses summarised by mean and std (the statistics style-transfer and domain
adaptation work with) show such modality and quality shifts without any identity information. Because the
module is frozen and shared by all experts, it is computed once in the single forward pass: the router
costs one small MLP (LayerNorm -> Linear(2C, hidden) -> GELU -> Linear(hidden, K)), no second backbone
pass and no separate domain network.

The rule is backbone-independent: ``DaLoraSettings.router_input`` names any module (full dotted name or
a unique dotted suffix); when it is None, :func:`default_router_input` gives the backbone's default. The
router's logits go to a :class:`GateState` shared by every DA-LoRA layer of the backbone, which turns
them into per-sample gates according to the gating mode.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_ROUTER_INPUTS",
    "DomainRouter",
    "GateState",
    "channel_statistics",
    "default_router_input",
    "resolve_module",
]

#: default router input per backbone class (matched against the class names of ``type(backbone).__mro__``)
DEFAULT_ROUTER_INPUTS: dict[str, str] = {
    "DlibResNet29": "conv32_down",
    "HFViTBackbone": "embeddings",
}
#: added to the variance before the square root (keeps the std finite and differentiable at 0)
STD_EPS = 1e-5


def default_router_input(backbone: nn.Module) -> str:
    """The module whose output the router reads by default for ``backbone``.

    A backbone may name it itself with a ``default_router_input`` attribute; otherwise the class is looked
    up in :data:`DEFAULT_ROUTER_INPUTS` (the dlib stem, the ViT token embeddings).
    """
    explicit = getattr(backbone, "default_router_input", None)
    if explicit:
        return explicit
    for cls in type(backbone).__mro__:
        if cls.__name__ in DEFAULT_ROUTER_INPUTS:
            return DEFAULT_ROUTER_INPUTS[cls.__name__]
    label = getattr(backbone, "name", None) or type(backbone).__name__
    raise ValueError(
        f"{label} has no default DA-LoRA router input; set DaLoraSettings.router_input to a frozen module that "
        "runs before the first adapted layer"
    )


def resolve_module(model: nn.Module, name: str) -> str:
    """The full name of the one module of ``model`` called ``name`` or ending with ``"." + name``."""
    hits = [full for full, _ in model.named_modules() if full and (full == name or full.endswith("." + name))]
    if len(hits) != 1:
        label = getattr(model, "name", None) or type(model).__name__
        found = f"matches {hits}" if hits else "matches no module"
        raise ValueError(f"DA-LoRA router input {name!r} {found} of {label}; give a unique module name")
    return hits[0]


def channel_statistics(features: torch.Tensor) -> torch.Tensor:
    """``(B, 2C)``: per-channel mean then std of a conv map ``(B, C, H, W)`` or tokens ``(B, N, C)``."""
    if not isinstance(features, torch.Tensor) or features.ndim not in (3, 4):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"the DA-LoRA router reads a (B, C, H, W) map or (B, N, C) tokens, got {shape}")
    dims = (2, 3) if features.ndim == 4 else (1,)
    variance, mean = torch.var_mean(features.float(), dim=dims, unbiased=False)
    return torch.cat([mean, (variance + STD_EPS).sqrt()], dim=1)


class GateState:
    """The gates of the current forward pass, shared by a backbone's router and all its DA-LoRA layers.

    The backbone's forward pre-hook (:meth:`begin_forward`) clears the last pass's gates; the router's hook
    (:meth:`DomainRouter.observe`) sets ``router_logits`` and, through :meth:`update`, ``gates`` ``(B, K)``
    and ``channel_gates`` ``(B, (K + S) * r)``: each expert's gate repeated over its ``r`` channels of the
    stacked A/B, then ``S`` (0 or 1) blocks of ones for the always-on shared expert.

    ``mode`` is the gating mode: ``classifier`` (softmax of the router logits; the logits are detached, so
    the router learns only from the domain cross-entropy its user puts on ``router_logits``), ``oracle``
    (one-hot of ``domains``, the expert index of each sample, set before the forward) or ``uniform``
    (``1 / K``).
    """

    def __init__(self, num_experts: int, r: int, shared_expert: bool, mode: str) -> None:
        self.num_experts = num_experts
        self.r = r
        self.shared_expert = shared_expert
        self.mode = mode
        #: expert index per sample for oracle gating, or None
        self.domains: torch.Tensor | None = None
        #: router logits computed elsewhere (:func:`afr.adapters.dalora.route_by`: from another view of the
        #: batch) that the next forward passes take instead of their own router input's, or None
        self.pinned_logits: torch.Tensor | None = None
        self.router_logits: torch.Tensor | None = None
        self.gates: torch.Tensor | None = None
        self.channel_gates: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles keep mode and domains but not the last pass's tensors (graph nodes that
        ``copy.deepcopy`` refuses)."""
        return {**self.__dict__, "router_logits": None, "gates": None, "channel_gates": None, "pinned_logits": None}

    def begin_forward(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of the backbone: forget the previous pass, so stale gates are never used."""
        self.router_logits = self.gates = self.channel_gates = None

    def gates_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The ``(B, K)`` float32 gates of the current mode for a batch with these router logits."""
        batch = logits.shape[0]
        if self.mode == "classifier":
            if self.num_experts == 1:  # one expert: gate 1 (its router may classify several domains)
                return logits.new_ones((batch, 1), dtype=torch.float32)
            return torch.softmax(logits.detach().float(), dim=1)
        if self.mode == "uniform":
            return logits.new_full((batch, self.num_experts), 1.0 / self.num_experts, dtype=torch.float32)
        if self.domains is None:
            raise ValueError("oracle gating needs the batch's domains: call set_domains(backbone, domains) first")
        domains = self.domains
        if domains.shape[0] == 1:  # one domain for every image (a pack of one domain, a known camera)
            domains = domains.expand(batch)
        if domains.shape[0] != batch:
            raise ValueError(f"oracle gating: {domains.shape[0]} domains set for a batch of {batch} images")
        return F.one_hot(domains.to(logits.device), self.num_experts).float()

    def update(self, logits: torch.Tensor, gates: torch.Tensor) -> None:
        """Record this pass's router logits and gates ``(B, K)``; derive the per-channel gates."""
        if gates.ndim != 2 or gates.shape[1] != self.num_experts:
            raise ValueError(f"gates must be (B, {self.num_experts}), got {tuple(gates.shape)}")
        blocks = torch.cat([gates, gates.new_ones(gates.shape[0], 1)], dim=1) if self.shared_expert else gates
        self.router_logits = logits
        self.gates = gates
        self.channel_gates = blocks.repeat_interleave(self.r, dim=1)

    def channel_gates_for(self, batch: int) -> torch.Tensor:
        """This pass's ``(B, (K + S) * r)`` channel gates, checked against the layer's batch size."""
        if self.channel_gates is None:
            raise RuntimeError(
                "a DA-LoRA layer ran before the router input module in this forward pass (no gates yet): "
                "DaLoraSettings.router_input must name a module that runs before every adapted layer"
            )
        if self.channel_gates.shape[0] != batch:
            raise RuntimeError(f"DA-LoRA gates are for {self.channel_gates.shape[0]} samples, the layer sees {batch}")
        return self.channel_gates


class DomainRouter(nn.Module):
    """Per-channel mean/std of the router input -> LayerNorm -> Linear -> GELU -> Linear -> ``K`` logits.

    Registered on the backbone (as ``dalora_router``) so that it moves, trains and saves with it; its
    :meth:`observe` is the forward hook on the router input module.
    """

    def __init__(self, channels: int, num_experts: int, hidden: int, state: GateState) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(2 * channels),
            nn.Linear(2 * channels, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_experts),
        )
        self.state = state

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Router logits ``(B, K)`` of a router-input output (conv map or tokens)."""
        statistics = channel_statistics(features)
        return self.mlp(statistics.to(self.mlp[0].weight.dtype))

    def observe(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        """Forward hook: compute the logits of this batch (or take the state's pinned logits) and hand them to
        the gate state."""
        logits = self.state.pinned_logits if self.state.pinned_logits is not None else self(output)
        self.state.update(logits, self.state.gates_from_logits(logits))
