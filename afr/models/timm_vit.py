"""timm vision transformers (DINOv2, CLIP, ...) as face backbones: the optional ``timm`` extra.

``pip install .[timm]`` (timm imports torchvision, which needs torch >= 2.14 here, not the CPU torch 2.13 of
``requirements.txt``; ``make test-timm`` builds such a venv). Without timm this module still imports; building
a backbone then raises :class:`TimmNotInstalledError` naming the extra.

Names: ``timm:<timm model name>[.<pretrained tag>]``, any timm ``VisionTransformer``, e.g.

* ``timm:vit_small_patch14_dinov2`` -- DINOv2 ViT-S/14 (384-D CLS), as ``dinov2-vits14``;
* ``timm:vit_base_patch16_clip_quickgelu_224`` -- OpenAI CLIP ViT-B/16 image tower (512-D projected CLS), as
  ``clip-vitb16`` (the ``quickgelu`` variant is the one that computes what OpenAI's CLIP does; timm's
  ``vit_base_patch16_clip_224.openai`` uses GELU).

Weights are a *local* checkpoint: a file (``.safetensors``, or a torch ``.pth``/``.bin``/``.pt``) or a directory
holding one of :data:`TIMM_WEIGHT_FILES` (a timm Hugging Face folder such as ``timm/vit_small_patch14_dinov2.lvd142m``).
Nothing is downloaded: the model is created with ``pretrained=False`` and the file is loaded with
``timm.models.load_state_dict`` through timm's ViT ``checkpoint_filter_fn``, so timm's own layout, the original
DINOv2 release (``dinov2_vits14_pretrain.pth``) and OpenAI CLIP / OpenCLIP files all load.

Pipeline of :meth:`TimmViTBackbone.forward`, the same as :class:`~afr.models.vit.HFViTBackbone`'s:

1. resize the chips to ``image_size`` (224 by default) and normalise them with the model's pretrained statistics
   (``pretrained_cfg`` mean/std: ImageNet's for DINOv2, OpenAI's for CLIP) -- :func:`~afr.models.base.preprocess_chips`;
2. the timm model: DINOv2 gives the CLS token after the final norm (``num_classes=0``), CLIP the CLS token after
   ``norm`` (``ln_post``) through ``head`` (CLIP's projection, ``num_classes=512``; ``num_classes=0`` keeps the
   768-D CLS);
3. optionally a new bias-free ``projection`` to ``embedding_dim``.

The position embeddings are resampled once, when the checkpoint is loaded, to the ``image_size // patch`` grid with
bicubic interpolation *without* anti-aliasing (``align_corners=False``), as transformers' DINOv2 and CLIP do at
every forward: the two paths compute the same embedding from the same weights.

**LoRA / DA-LoRA targets.** timm computes q, k and v with one ``nn.Linear`` ``attn.qkv`` (``3 D`` outputs). The
backbone splits each into :class:`SplitQKV`: three ``nn.Linear`` children ``q_proj``, ``k_proj``, ``v_proj`` (the
rows of the fused weight) whose outputs are concatenated, so timm's attention runs unchanged. The default targets
are ``q_proj``/``v_proj``, as on the Hugging Face path: a LoRA (or DA-LoRA) adapts q and v with their own ``A``/``B``
and leaves k untouched, the same function and the same parameter count as the Hugging Face q/v LoRA, with no
change to the adapters (their target matching, merge, save and load work on the three ``nn.Linear``).
``qkv.k_proj`` (or ``k_proj``) can be targeted too; ``qkv`` itself is no longer a linear layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from afr.models.base import Backbone, attach_projection, preprocess_chips, register_pixel_normalisation
from afr.models.factory import TIMM_PREFIX, MissingWeightsError, UnknownBackboneError

__all__ = [
    "TIMM_EXTRA",
    "TIMM_PREFIX",
    "TIMM_WEIGHT_FILES",
    "SplitQKV",
    "TimmNotInstalledError",
    "TimmViTBackbone",
    "import_timm",
    "split_qkv",
]

#: how to install timm with the project
TIMM_EXTRA = "pip install .[timm]"
#: weight files looked for, in this order, when ``weights`` is a directory
TIMM_WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


class TimmNotInstalledError(ImportError):
    """timm (the optional ``[timm]`` extra) is not installed, or does not import."""


def import_timm():
    """The ``timm`` module; :class:`TimmNotInstalledError` naming the extra when it is missing or does not import
    (PyPI's torchvision beside the CPU torch 2.13 fails with ``operator torchvision::nms does not exist``)."""
    how = (f"timm backbones need the optional timm extra: {TIMM_EXTRA} (timm imports torchvision, which needs "
           "torch >= 2.14: `make test-timm` builds such a venv, .venv-timm)")
    try:
        import timm
    except Exception as error:  # ImportError, or torchvision's RuntimeError on a mismatched torch
        raise TimmNotInstalledError(
            f"{how}; import timm failed: {type(error).__name__}: {' '.join(str(error).split())[:200]}"
        ) from error
    if not hasattr(timm, "create_model"):  # e.g. a folder called timm on sys.path (a namespace package)
        raise TimmNotInstalledError(f"{how}; the 'timm' found ({list(getattr(timm, '__path__', []))[:1]}) is not "
                                    "the timm library")
    return timm


class SplitQKV(nn.Module):
    """A fused ``qkv`` ``nn.Linear`` as three ``nn.Linear`` ``q_proj``, ``k_proj``, ``v_proj``, outputs concatenated
    in that order (the layout timm's attention splits), so LoRA can target q and v alone."""

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        if fused.out_features % 3:
            raise ValueError(f"a fused qkv layer has 3 D outputs, got {fused.out_features}")
        width = fused.out_features // 3
        factory = {"device": fused.weight.device, "dtype": fused.weight.dtype}
        bias = fused.bias is not None
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            layer = nn.Linear(fused.in_features, width, bias=bias, **factory)
            rows = slice(index * width, (index + 1) * width)
            with torch.no_grad():
                layer.weight.copy_(fused.weight[rows])
                if bias:
                    layer.bias.copy_(fused.bias[rows])
            layer.requires_grad_(fused.weight.requires_grad)
            setattr(self, name, layer)
        self.in_features, self.out_features = fused.in_features, fused.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def fused(self) -> nn.Linear:
        """The equivalent single ``nn.Linear`` (e.g. after merging a LoRA into ``q_proj``/``v_proj``)."""
        layers = (self.q_proj, self.k_proj, self.v_proj)
        for layer in layers:
            if not isinstance(layer, nn.Linear):
                raise ValueError("SplitQKV.fused() needs plain nn.Linear q/k/v (merge the adapter first)")
        bias = self.q_proj.bias is not None
        weight = self.q_proj.weight
        fused = nn.Linear(self.in_features, self.out_features, bias=bias, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
            if bias:
                fused.bias.copy_(torch.cat([layer.bias for layer in layers]))
        return fused


def split_qkv(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` called ``qkv`` in ``model`` by a :class:`SplitQKV` (in place); the count."""
    names = [name for name, module in model.named_modules()
             if name.rsplit(".", 1)[-1] == "qkv" and isinstance(module, nn.Linear)]
    for name in names:
        model.set_submodule(name, SplitQKV(model.get_submodule(name)))
    return len(names)


def weights_file(name: str, weights: str | Path | None) -> Path:
    """The checkpoint file of ``weights`` (a file, or a directory holding one of :data:`TIMM_WEIGHT_FILES`);
    :class:`~afr.models.factory.MissingWeightsError` naming the missing path otherwise."""
    how = ("pass weights=FILE (--weights FILE): a local checkpoint (.safetensors/.pth/.bin) or a directory holding "
           f"{' or '.join(TIMM_WEIGHT_FILES)}, e.g. a copy of the timm Hugging Face repository of the model, "
           "downloaded on a machine with internet access")
    if weights is None:
        raise MissingWeightsError(f"{name} needs a local checkpoint and none was given: {how}")
    path = Path(weights).expanduser()
    if path.is_dir():
        for candidate in TIMM_WEIGHT_FILES:
            if (path / candidate).is_file():
                return path / candidate
        raise MissingWeightsError(f"{name}: {path} holds none of {', '.join(TIMM_WEIGHT_FILES)}: {how}")
    if not path.is_file():
        raise MissingWeightsError(f"{name}: checkpoint {path} not found: {how}")
    return path


class TimmViTBackbone(Backbone):
    """A timm ``VisionTransformer`` as a face backbone (see the module docstring for the pipeline and targets).

    Args:
        model: the timm ``VisionTransformer``, its position embeddings already at ``image_size``; its fused
            ``qkv`` layers are split (:func:`split_qkv`) here.
        name: backbone name reported in results (``"timm:vit_small_patch14_dinov2"``).
        image_size: side the chips are resized to.
        mean, std: per-channel normalisation; default: the model's ``pretrained_cfg`` (ImageNet's otherwise).
        embedding_dim: add a new bias-free ``projection`` layer to this width; None keeps the native width.
    """

    alignment = "arcface"
    input_size = 112
    #: the module whose output DA-LoRA's router reads: the tokens after patch embedding + class token + position
    #: embedding, what transformers' ``embeddings`` module returns (afr.adapters.dalora.router)
    default_router_input = "model.pos_drop"

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        if int(image_size) <= 0:
            raise ValueError(f"{name}: image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(mean if mean is not None else cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(std if std is not None else cfg.get("std", (0.229, 0.224, 0.225)))
        register_pixel_normalisation(self, mean, std, name)
        if split_qkv(model) == 0:
            raise ValueError(f"{name}: no fused attention qkv nn.Linear found; TimmViTBackbone wraps timm ViTs")
        self.model = model
        attach_projection(self, model.num_classes or model.num_features, embedding_dim, name)
        self.default_lora_targets = ("q_proj", "v_proj")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        model_name: str,
        weights: str | Path | None,
        *,
        name: str | None = None,
        image_size: int = 224,
        embedding_dim: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **model_kwargs: Any,
    ) -> "TimmViTBackbone":
        """Create timm's ``model_name`` (``pretrained=False``: nothing is downloaded) with ``img_size=image_size``
        and load the local checkpoint ``weights`` (a file or a directory, see :func:`weights_file`) into it.

        ``model_kwargs`` go to ``timm.create_model`` (e.g. ``num_classes=0`` for CLIP's unprojected CLS, or the
        widths of a small test model). A classifier head in the checkpoint is dropped when the model has none
        (``num_classes=0``); any other missing or unexpected tensor is a ValueError naming the file. The
        backbone comes back in eval mode.
        """
        name = name or TIMM_PREFIX + model_name
        path = weights_file(name, weights)
        timm = import_timm()
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        architecture = model_name.split(".", 1)[0]  # without a pretrained tag (".openai", ".lvd142m")
        if not timm.is_model(architecture):
            similar = timm.list_models(f"*{architecture.split('_')[0]}*{architecture.split('_')[-1]}*")[:6]
            raise UnknownBackboneError(f"{name}: timm {timm.__version__} has no model {architecture!r}"
                                       + (f" (similar: {', '.join(similar)})" if similar else ""))
        model = timm.create_model(model_name, pretrained=False, img_size=image_size, **model_kwargs)
        if not isinstance(model, VisionTransformer):
            raise ValueError(f"{name}: {type(model).__name__} is not a timm VisionTransformer (the models "
                             "TimmViTBackbone wraps: DINOv2, CLIP, ViT)")
        try:
            raw = timm.models.load_state_dict(str(path))
        except Exception as error:
            raise ValueError(f"{name}: {path} is not a readable checkpoint: {type(error).__name__}: "
                             f"{' '.join(str(error).split())[:200]}") from error
        state = checkpoint_filter_fn(raw, model, interpolation="bicubic", antialias=False)
        if not model.num_classes:
            state = {key: value for key, value in state.items() if not key.startswith("head.")}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatch: another architecture
            raise ValueError(f"{name}: {path} does not fit {model_name}: {' '.join(str(error).split())[:300]}") \
                from error
        if missing or unexpected:
            hint = (" (a checkpoint without CLIP's projection: pass num_classes=0)"
                    if any(key.startswith("head.") for key in missing) else "")
            raise ValueError(f"{name}: {path} does not fit {model_name}: missing {sorted(missing)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]}{hint}")
        backbone = cls(model, name=name, image_size=image_size, mean=mean, std=std, embedding_dim=embedding_dim)
        return backbone.eval()

    # ------------------------------------------------------------------ forward
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float RGB in ``[0, 1]`` -> resized, clamped, normalised pixels."""
        return preprocess_chips(images, self.image_size, self.pixel_mean, self.pixel_std, self.name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images).to(dtype=self.model.patch_embed.proj.weight.dtype)
        features = self.model(pixels)
        if self.projection is not None:
            features = self.projection(features)
        return features

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, embedding_dim={self.embedding_dim}"
