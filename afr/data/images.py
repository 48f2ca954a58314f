"""Reading face images from disk as RGB uint8 arrays, with one clear error per bad file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class CorruptImageError(ValueError):
    """An image file or buffer could not be decoded; the message names the source."""


class ImageTooLargeError(CorruptImageError):
    """An image declares more pixels than allowed (PIL's decompression-bomb guard, or ``max_pixels``); it is
    refused before its pixels are decoded."""


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float thermal frames: stretch to 8 bit per image.
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low + 1e-12) * 255.0
        image = Image.fromarray(array.round().astype(np.uint8), mode="L")
    # np.array copies: PIL-backed arrays are read-only, which torch.from_numpy warns about.
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _check_size(image: Image.Image, max_pixels: int | None, source: object) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image {source} is {width}x{height} ({width * height} pixels), more than the "
                                 f"{max_pixels} allowed; not decoded")


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read any PIL-readable file (JPEG, PGM, GIF without extension, TIFF) as an HxWx3 uint8 RGB array.

    An image larger than ``max_pixels`` (or than PIL's decompression-bomb limit) raises
    :class:`ImageTooLargeError` naming the file, before its pixels are decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            _check_size(image, max_pixels, path)
            image.load()
            return _to_rgb_array(image)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image {path} is too large to decode: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, CorruptImageError):
            raise
        raise CorruptImageError(f"cannot decode image {path}: {error}") from None


def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG/PNG) as an HxWx3 uint8 RGB array; ``source`` names them in errors."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _to_rgb_array(image)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image in {source} is too large to decode: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"cannot decode image in {source}: {error}") from None


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode an HxWx3 uint8 RGB array as JPEG bytes (as InsightFace packs store images)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
