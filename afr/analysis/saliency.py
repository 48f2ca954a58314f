"""Where a face model looks: Grad-CAM for convolutional backbones, attention maps for the ViTs.

**Grad-CAM for a verification model.** A face embedding has no class score to explain; what a pair decision
depends on is the similarity of the two embeddings. :func:`grad_cam` therefore explains the cosine similarity
between a chip's embedding and a *reference* embedding (typically the other image of the pair, embedded by
the same model): the gradients of that score with respect to one layer's activations, averaged over space,
weight the activation channels; the ReLU of the weighted sum, upsampled to the chip, is the map (Selvaraju et
al., ICCV 2017). The reference must not be the chip's own embedding: the gradient of ``cos(e, e)`` is zero.
For the dlib ResNet-29 the default layer is ``conv128_2`` (the last 128-channel block: 8x8 cells on a 150-px
chip, fine enough to separate eyes, nose and mouth; the 256-channel blocks are 4x4 and 2x2).

**Attention maps for the ViTs** (:func:`vit_attention_maps`): the self-attention probabilities of every layer
(transformers' eager attention, switched on for the call and restored after), the last layer's CLS-to-patch
attention averaged over heads, and attention rollout (Abnar & Zuidema, ACL 2020: per layer the head-averaged
attention plus the identity for the residual path, rows renormalised, multiplied through the layers).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from afr.eval.extract import chips_to_tensor

__all__ = ["DEFAULT_CAM_LAYER", "AttentionMaps", "grad_cam", "vit_attention_maps"]

#: the dlib ResNet-29 block whose output Grad-CAM explains by default (8x8 cells)
DEFAULT_CAM_LAYER = "conv128_2"


def _as_batch(backbone: nn.Module, chips: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
    if isinstance(chips, torch.Tensor):
        return chips.float()
    return chips_to_tensor(chips, getattr(backbone, "input_size", None))


def grad_cam(backbone: nn.Module, chips: Sequence[np.ndarray] | torch.Tensor, reference: torch.Tensor | np.ndarray,
             layer: str = DEFAULT_CAM_LAYER) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in ``[0, 1]`` of ``cos(embedding(chip), reference)`` (module docstring).

    ``chips``: ``HxWx3`` uint8 chips or a float ``(B, 3, H, W)`` batch in ``[0, 1]``; ``reference``: ``(B, D)``
    embeddings (one per chip) or one ``(D,)`` for all; ``layer``: the module whose output is explained. A map
    with no positive evidence is all zeros. The backbone's train/eval mode and parameters are left as they were.
    """
    images = _as_batch(backbone, chips)
    device = next(backbone.parameters()).device
    images = images.to(device).requires_grad_(True)  # activations need a graph even when every weight is frozen
    reference = torch.as_tensor(np.asarray(reference) if not isinstance(reference, torch.Tensor) else reference,
                                dtype=torch.float32, device=device)
    reference = reference.expand(images.shape[0], -1) if reference.ndim == 1 else reference
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        captured["activation"] = output

    module = backbone.get_submodule(layer)
    handle = module.register_forward_hook(keep)
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.enable_grad():
            score = F.cosine_similarity(backbone(images), reference.detach(), dim=1).sum()
            activation = captured["activation"]
            # autograd.grad, not backward(): no .grad is left on the backbone's parameters
            (gradient,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
        backbone.train(was_training)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).clamp(0.0, 1.0).cpu().numpy()


@dataclass
class AttentionMaps:
    """Attention of a ViT on a batch: ``layers`` (one ``(B, heads, T, T)`` array per layer, rows sum to 1 over
    the keys), ``cls`` (last layer's CLS-to-patch attention, head mean, ``(B, grid, grid)``) and ``rollout``
    (``(B, grid, grid)``, the CLS row of the rolled-out attention over the patches)."""

    layers: list[np.ndarray]
    cls: np.ndarray
    rollout: np.ndarray


def vit_attention_maps(backbone: nn.Module, chips: Sequence[np.ndarray] | torch.Tensor) -> AttentionMaps:
    """Attention maps of an :class:`~afr.models.vit.HFViTBackbone` (DINOv2 or CLIP) on ``chips``."""
    model = getattr(backbone, "model", None)
    if model is None or not hasattr(backbone, "preprocess"):
        raise TypeError(f"vit_attention_maps needs an HFViTBackbone (DINOv2/CLIP), got {type(backbone).__name__}")
    images = _as_batch(backbone, chips).to(next(backbone.parameters()).device)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa/flash attention return no probabilities
    try:
        with torch.no_grad():
            pixels = backbone.preprocess(images).to(dtype=model.dtype)
            options = {} if backbone.family == "dinov2" else {
                "interpolate_pos_encoding": backbone.image_size != int(model.config.image_size)}
            outputs = model(pixel_values=pixels, output_attentions=True, **options)
    finally:
        model.set_attn_implementation(previous)
    layers = [attention.float() for attention in outputs.attentions]
    config = model.config
    grid = backbone.image_size // config.patch_size
    patches = slice(layers[0].shape[-1] - grid * grid, None)  # CLS (and any register tokens) come first
    cls = layers[-1].mean(dim=1)[:, 0, patches].reshape(-1, grid, grid)
    tokens = layers[0].shape[-1]
    rolled = torch.eye(tokens).expand(images.shape[0], tokens, tokens)
    for attention in layers:
        mixed = 0.5 * attention.mean(dim=1) + 0.5 * torch.eye(tokens)
        rolled = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rolled
    rollout = rolled[:, 0, patches].reshape(-1, grid, grid)
    return AttentionMaps([layer.cpu().numpy() for layer in layers], cls.cpu().numpy(), rollout.cpu().numpy())
