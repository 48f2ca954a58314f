"""A reproducible low-quality version of a face chip: down-sampling, blur and JPEG compression.

Each image gets its own random strength drawn from a generator seeded by ``(seed, key)``, so the
same chip always degrades the same way and the ``lowquality`` domain is rebuilt bit-identically.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from afr.data.images import decode_image, encode_jpeg


@dataclass(frozen=True)
class DegradeSettings:
    """Ranges the per-image strengths are drawn from (uniformly)."""

    downsample_side: tuple[int, int] = (20, 40)  # pixels of the short side before up-sampling back
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    jpeg_quality: tuple[int, int] = (10, 35)


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def degradation_strengths(seed: int, key: str, settings: DegradeSettings = DegradeSettings()) -> tuple[int, float, int]:
    """``(downsample_side, blur_sigma, jpeg_quality)`` that :func:`degrade` applies to the chip named ``key``
    (public so that an error analysis can ask how hard a low-quality chip was degraded)."""
    rng = _rng(seed, key)
    side = int(rng.integers(settings.downsample_side[0], settings.downsample_side[1] + 1))
    sigma = float(rng.uniform(*settings.blur_sigma))
    quality = int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1))
    return side, sigma, quality


def degrade(chip: np.ndarray, seed: int, key: str, settings: DegradeSettings = DegradeSettings()) -> np.ndarray:
    """Return a degraded copy of an HxWx3 uint8 chip; ``key`` (e.g. the file name) picks its strengths."""
    height, width = chip.shape[:2]
    side, sigma, quality = degradation_strengths(seed, key, settings)
    scale = side / min(height, width)
    small = cv2.resize(chip, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma)
    restored = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return decode_image(encode_jpeg(restored, quality=quality), source=f"degraded {key}")
