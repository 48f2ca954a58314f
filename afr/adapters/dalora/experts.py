"""Surgery on the stacked DA-LoRA expert tensors: one expert's blocks out of every layer (:func:`expert_blocks`),
back in, differentiably (:func:`with_expert_blocks`), and written into the model (:func:`load_parameters`); and the
LoRA targets a DA-LoRA model shares with a LoRA start (:func:`shared_targets`).

Each :class:`~afr.adapters.dalora.DaLoraLayer` stacks its K experts' ``A`` matrices row-wise (``(K r, in)``) and
their ``B`` matrices column-wise (``(out, K r)``); expert ``i`` owns rows / columns ``i r .. (i + 1) r``. Training
one expert alone (notebook 05's adaptation to thermal) differentiates only its blocks, so the other experts keep
their tensors bit for bit.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from afr.adapters.dalora.layer import DaLoraLayer
from afr.adapters.dalora.router import default_router_input, resolve_module
from afr.adapters.lora.model import resolve_targets

__all__ = ["dalora_layers", "expert_blocks", "load_parameters", "shared_targets", "with_expert_blocks"]


def shared_targets(backbone: nn.Module) -> list[str]:
    """The backbone's LoRA targets that DA-LoRA also adapts: all but those inside its router input (the dlib
    stem), which must stay frozen. A LoRA start on these is reproduced exactly by a warm-started DA-LoRA."""
    router_input = resolve_module(backbone, default_router_input(backbone))
    return [name for name in resolve_targets(backbone, backbone.default_lora_targets)
            if name != router_input and not name.startswith(router_input + ".")]


def dalora_layers(backbone: nn.Module) -> list[tuple[str, DaLoraLayer]]:
    """Every DA-LoRA layer of ``backbone`` with its qualified name, in module order."""
    return [(name, module) for name, module in backbone.named_modules() if isinstance(module, DaLoraLayer)]


def expert_blocks(backbone: nn.Module, expert: str) -> dict[str, Tensor]:
    """Copies of ``expert``'s rows of every stacked DA-LoRA ``A`` and its columns of every stacked ``B``, under
    the names of the stacked parameters: the only tensors the adaptation of that expert changes."""
    index = backbone.dalora_settings.expert_index(expert)
    blocks = {}
    for name, layer in dalora_layers(backbone):
        rows = slice(index * layer.r, (index + 1) * layer.r)
        blocks[f"{name}.lora_A.weight"] = layer.lora_A.weight[rows].detach().clone()
        blocks[f"{name}.lora_B.weight"] = layer.lora_B.weight[:, rows].detach().clone()
    return blocks


def with_expert_blocks(backbone: nn.Module, blocks: Mapping[str, Tensor], expert: str) -> dict[str, Tensor]:
    """The stacked A/B tensors of the backbone with ``expert``'s blocks replaced by ``blocks`` (differentiable in
    ``blocks`` only: the other experts' blocks are detached)."""
    index = backbone.dalora_settings.expert_index(expert)
    full = {}
    for name, layer in dalora_layers(backbone):
        start, end = index * layer.r, (index + 1) * layer.r
        a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
        full[f"{name}.lora_A.weight"] = torch.cat([a[:start], blocks[f"{name}.lora_A.weight"], a[end:]], dim=0)
        full[f"{name}.lora_B.weight"] = torch.cat([b[:, :start], blocks[f"{name}.lora_B.weight"], b[:, end:]], dim=1)
    return full


def load_parameters(backbone: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Copy ``tensors`` into the backbone's parameters of the same names (in place, without autograd)."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            backbone.get_parameter(name).copy_(tensor)
