"""Embeddings of face chips with a :class:`~afr.models.base.Backbone`, with InsightFace's flip test.

InsightFace (``arcface_torch/eval/verification.py``) embeds every chip and its horizontal mirror,
adds the two raw embeddings and L2-normalises the sum; :func:`extract_embeddings` does the same.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import normalize
from torch import nn
from tqdm.auto import tqdm

__all__ = ["chips_to_tensor", "distinct_chips", "extract_embeddings", "extract_unique_embeddings"]


def _check_chip(index: int, chip: np.ndarray) -> np.ndarray:
    chip = np.asarray(chip)
    if chip.ndim != 3 or chip.shape[2] != 3 or chip.dtype != np.uint8:
        raise ValueError(
            f"image {index} must be an HxWx3 uint8 RGB array, got shape {chip.shape} and dtype {chip.dtype}"
        )
    return chip


def chips_to_tensor(chips: Sequence[np.ndarray], size: int | None = None) -> torch.Tensor:
    """Stack ``HxWx3`` uint8 RGB chips into a float ``(B, 3, size, size)`` tensor in ``[0, 1]``.

    A chip whose height or width is not ``size`` is resized to ``size x size`` (bilinear,
    ``torch.nn.functional.interpolate`` with ``antialias=True``; the aspect ratio is not kept).
    ``size=None`` keeps the chips' own size, which must then be the same for all of them.
    """
    tensors = []
    for index, chip in enumerate(chips):
        chip = _check_chip(index, chip)
        tensor = torch.tensor(chip).permute(2, 0, 1).float().div_(255.0)
        if size is not None and tensor.shape[1:] != (size, size):
            tensor = F.interpolate(
                tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
        tensors.append(tensor)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"chips have different sizes {sorted(shapes)}; pass size= to resize them")
    return torch.stack(tensors)


def _to_float64(output: torch.Tensor) -> np.ndarray:
    """A backbone output as a float64 numpy array (converted on the CPU: some devices lack float64)."""
    return output.detach().float().cpu().numpy().astype(np.float64)


def extract_embeddings(
    backbone: nn.Module,
    images: Sequence[np.ndarray] | np.ndarray,
    batch_size: int = 64,
    flip: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """L2-normalised embeddings ``(N, D)`` float32 of ``N`` face chips.

    Args:
        backbone: a :class:`~afr.models.base.Backbone` (or any module taking ``(B, 3, S, S)`` in
            ``[0, 1]``); it is moved to ``device`` and run in eval mode (its previous train/eval
            mode is restored afterwards). Chips are resized to its ``input_size`` when they differ
            (see :func:`chips_to_tensor`); without an ``input_size`` they must all share one size.
        images: a list of ``HxWx3`` uint8 RGB arrays or one ``(N, H, W, 3)`` uint8 array.
        batch_size: chips per forward pass.
        flip: add the embedding of the horizontally mirrored chip before normalising (flip test).
        device: where the forward passes run.
        progress: show a tqdm progress bar (on stderr).

    The sum of the two raw embeddings is formed and L2-normalised in float64
    (``sklearn.preprocessing.normalize``), then returned as float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n_images = len(images)
    if n_images == 0:
        raise ValueError("no images to embed")
    size = getattr(backbone, "input_size", None)
    was_training = backbone.training
    backbone.to(device)
    backbone.eval()
    outputs: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            starts = range(0, n_images, batch_size)
            for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
                batch = chips_to_tensor(images[start:start + batch_size], size).to(device)
                embedding = _to_float64(backbone(batch))
                if flip:
                    embedding = embedding + _to_float64(backbone(torch.flip(batch, dims=[3])))
                outputs.append(embedding)
    finally:
        backbone.train(was_training)
    embeddings = np.concatenate(outputs, axis=0)
    if not np.isfinite(embeddings).all():
        raise ValueError("the backbone produced NaN or infinite embeddings")
    return normalize(embeddings).astype(np.float32)


def extract_unique_embeddings(
    backbone: nn.Module,
    images: Sequence[np.ndarray],
    batch_size: int = 64,
    flip: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """:func:`extract_embeddings` that embeds each distinct chip once.

    Verification packs repeat images across pairs (the embedded controlled pack holds 1,200 chips
    of about 160 distinct images); identical pixels give identical embeddings, so the result equals
    :func:`extract_embeddings` on ``images`` while running the network only on the distinct ones.
    """
    distinct, inverse = distinct_chips(images)
    return extract_embeddings(backbone, distinct, batch_size, flip, device, progress)[inverse]


def distinct_chips(images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct chips of ``images`` (identical pixels once, in order of first appearance) and, per image, the
    index of its chip: ``[distinct[i] for i in inverse]`` is ``images``."""
    first_of: dict[bytes, int] = {}
    inverse = np.empty(len(images), dtype=np.int64)
    distinct: list[np.ndarray] = []
    for index, image in enumerate(images):
        image = np.ascontiguousarray(image)
        key = hashlib.sha1(repr(image.shape).encode() + image.tobytes()).digest()
        if key not in first_of:
            first_of[key] = len(distinct)
            distinct.append(image)
        inverse[index] = first_of[key]
    return distinct, inverse
