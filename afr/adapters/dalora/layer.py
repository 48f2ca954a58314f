"""DA-LoRA layers: a frozen ``nn.Linear``/``nn.Conv2d`` plus ``K`` (+1 shared) LoRA experts in one pass.

The experts are stacked into a single rank-``(K + S) * r`` pair, so a batch with per-sample gates costs one
low-rank branch, never a loop over experts or samples::

    h = A(dropout(x))                  # (B, ..., (K + S) r) or (B, (K + S) r, H', W')
    h = h * channel_gates              # gates repeated r times per expert (ones for the shared block)
    y = W x + scaling * B(h)

``A`` is one ``nn.Linear`` (in -> (K + S) r) or one ``nn.Conv2d`` with the base conv's kernel, stride,
padding, dilation and padding mode (groups 1); ``B`` one ``nn.Linear`` ((K + S) r -> out) or 1x1
``nn.Conv2d``. Expert ``k`` owns channels ``k r .. (k + 1) r - 1`` of both; the shared expert the last
block. As in peft's LoRA, ``A`` is Kaiming-uniform and ``B`` zero, so a fresh layer computes exactly ``W x``.
Module names follow peft (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from afr.adapters.dalora.router import GateState

__all__ = ["DaLoraConv2d", "DaLoraLayer", "DaLoraLinear", "wrap_layer"]


class DaLoraLayer(nn.Module):
    """Shared logic of :class:`DaLoraLinear` and :class:`DaLoraConv2d` (see the module docstring).

    Args:
        base_layer: the frozen layer to adapt.
        r: rank of each expert.
        num_experts: ``K``.
        shared_expert: add a last, always-on block.
        scaling: factor on the low-rank branch (``alpha / r``).
        dropout: dropout probability on the branch input.
        state: the backbone's :class:`~afr.adapters.dalora.router.GateState`, read at every forward.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        *,
        r: int,
        num_experts: int,
        shared_expert: bool,
        scaling: float,
        dropout: float,
        state: GateState,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.r = r
        self.num_experts = num_experts
        self.shared_expert = shared_expert
        self.scaling = scaling
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A, self.lora_B = self._stacks((num_experts + shared_expert) * r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's LoRA initialisation
        nn.init.zeros_(self.lora_B.weight)
        self.state = state

    def _stacks(self, channels: int) -> tuple[nn.Module, nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gate(self, hidden: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _delta(self, channels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        hidden = self.lora_A(self.lora_dropout(x))
        gates = self.state.channel_gates_for(hidden.shape[0]).to(hidden.dtype)
        return result + self.lora_B(self._gate(hidden, gates)) * self.scaling

    def expert_channels(self, expert: int) -> torch.Tensor:
        """Indices of the A rows / B columns of ``expert`` and of the shared expert, if any."""
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert index {expert} out of range for {self.num_experts} experts")
        blocks = [expert, self.num_experts] if self.shared_expert else [expert]
        return torch.cat([torch.arange(b * self.r, (b + 1) * self.r) for b in blocks]).to(self.lora_A.weight.device)

    def delta_weight(self, expert: int) -> torch.Tensor:
        """``scaling * (B_k A_k [+ B_s A_s])``, shaped like the base weight (what oracle gating adds)."""
        return self.scaling * self._delta(self.expert_channels(expert))

    def merge(self, expert: int) -> nn.Module:
        """Add :meth:`delta_weight` of ``expert`` to the base weight in place; return the base layer."""
        base = self.base_layer
        with torch.no_grad():
            base.weight += self.delta_weight(expert).to(base.weight.dtype)
        return base

    def extra_repr(self) -> str:
        return f"r={self.r}, experts={self.num_experts}, shared_expert={self.shared_expert}, scaling={self.scaling:g}"


class DaLoraLinear(DaLoraLayer):
    """DA-LoRA on an ``nn.Linear``: inputs ``(B, ..., in)``, one gate vector per sample for all its tokens."""

    def _stacks(self, channels: int) -> tuple[nn.Module, nn.Module]:
        base = self.base_layer
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        return (
            nn.Linear(base.in_features, channels, bias=False, **factory),
            nn.Linear(channels, base.out_features, bias=False, **factory),
        )

    def _gate(self, hidden: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return hidden * gates.view(gates.shape[0], *([1] * (hidden.ndim - 2)), gates.shape[1])

    def _delta(self, channels: torch.Tensor) -> torch.Tensor:
        return self.lora_B.weight[:, channels] @ self.lora_A.weight[channels]


class DaLoraConv2d(DaLoraLayer):
    """DA-LoRA on an ``nn.Conv2d`` (groups 1): one gate vector per sample for all its positions."""

    def _stacks(self, channels: int) -> tuple[nn.Module, nn.Module]:
        base = self.base_layer
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        lora_a = nn.Conv2d(
            base.in_channels, channels, base.kernel_size, stride=base.stride, padding=base.padding,
            dilation=base.dilation, padding_mode=base.padding_mode, bias=False, **factory,
        )
        return lora_a, nn.Conv2d(channels, base.out_channels, 1, bias=False, **factory)

    def _gate(self, hidden: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return hidden * gates[:, :, None, None]

    def _delta(self, channels: torch.Tensor) -> torch.Tensor:
        return torch.einsum("or,rikl->oikl", self.lora_B.weight[:, channels, 0, 0], self.lora_A.weight[channels])


def wrap_layer(base_layer: nn.Module, **options) -> DaLoraLayer:
    """The DA-LoRA layer for ``base_layer`` (``nn.Linear`` or ``nn.Conv2d`` with groups 1); ``options`` as
    :class:`DaLoraLayer`'s keyword arguments."""
    if isinstance(base_layer, nn.Linear):
        return DaLoraLinear(base_layer, **options)
    if isinstance(base_layer, nn.Conv2d):
        if base_layer.groups != 1:
            raise ValueError(f"DA-LoRA adapts convolutions with groups=1, got groups={base_layer.groups}")
        return DaLoraConv2d(base_layer, **options)
    raise TypeError(f"DA-LoRA adapts nn.Linear and nn.Conv2d layers, got {type(base_layer).__name__}")
