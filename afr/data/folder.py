"""A folder of face images, one sub-folder per identity (``root/<identity>/<image>``), and its pairs."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from afr.data.images import read_image
from afr.data.pairs import interleave_folds, same_identity_pairs

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "folder_verification_pairs"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".gif", ".webp"}
)


class ImageFolderDataset:
    """Images under ``root/<identity>/``; identities sorted by name get labels ``0 .. num_classes - 1``.

    ``ds[i] -> (image, label)`` with the image an HxWx3 uint8 RGB array (``transform`` applied when
    given). Hidden entries and files whose suffix is not in ``extensions`` (case-insensitive, default
    :data:`IMAGE_EXTENSIONS`) are skipped; identity folders without images are skipped with a warning.
    Symlinked identity folders are followed.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[np.ndarray], Any] | None = None,
        extensions: Iterable[str] | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.transform = transform
        allowed = IMAGE_EXTENSIONS if extensions is None else {
            (ext if ext.startswith(".") else f".{ext}").lower() for ext in extensions
        }
        self.extensions = frozenset(allowed)
        self.classes: list[str] = []
        self.samples: list[tuple[Path, int]] = []
        folders = sorted(entry for entry in self.root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        for folder in folders:
            files = sorted(
                entry for entry in folder.iterdir()
                if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in self.extensions
            )
            if not files:
                log.warning("%s: no images with extensions %s, skipped", folder, sorted(self.extensions))
                continue
            label = len(self.classes)
            self.classes.append(folder.name)
            self.samples += [(path, label) for path in files]
        if not self.samples:
            raise FileNotFoundError(
                f"no images found under {self.root}: expected {self.root}/<identity>/<image> with extensions "
                f"{sorted(self.extensions)}"
            )
        self.class_to_idx = {name: label for label, name in enumerate(self.classes)}
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, images={len(self)}, classes={self.num_classes})"


def folder_verification_pairs(
    labels: np.ndarray | Iterable[int], seed: int = 0, max_negatives: int | None = None, n_folds: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Every same-identity pair plus as many seeded different-identity pairs, laid out in folds.

    Returns ``pairs`` (P, 2) int64 image indices (``i < j``) and ``issame`` (P,) bool. The number of
    different pairs is the number of same pairs, capped by ``max_negatives`` and by how many exist;
    they are drawn without repeats with ``numpy.random.default_rng(seed)`` (from the list of all
    different pairs, or by rejection sampling for folders with over two million pairs). The list is ordered in
    ``n_folds`` blocks of same then different pairs (:func:`afr.data.pairs.interleave_folds`), so
    InsightFace's contiguous 10-fold split sees both classes in every fold.
    """
    labels = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    positives = same_identity_pairs(labels)
    if len(positives) == 0:
        raise ValueError("no identity has two images: cannot form same-identity pairs")
    n_total = len(labels) * (len(labels) - 1) // 2
    n_candidates = n_total - len(positives)
    if n_candidates == 0:
        raise ValueError("only one identity: cannot form different-identity pairs")
    n_negative = len(positives) if max_negatives is None else min(len(positives), int(max_negatives))
    n_negative = min(n_negative, n_candidates)
    rng = np.random.default_rng(seed)
    if n_total <= _ENUMERATE_LIMIT or 2 * n_negative > n_candidates:
        first, second = np.triu_indices(len(labels), k=1)
        candidates = np.flatnonzero(labels[first] != labels[second])
        chosen = np.sort(rng.choice(candidates, size=n_negative, replace=False))
        negatives = np.stack([first[chosen], second[chosen]], axis=1)
    else:  # large folders: rejection sampling instead of listing every pair
        seen: set[tuple[int, int]] = set()
        while len(seen) < n_negative:
            draws = rng.integers(0, len(labels), size=(2 * (n_negative - len(seen)) + 16, 2))
            draws.sort(axis=1)
            for a, b in draws[labels[draws[:, 0]] != labels[draws[:, 1]]].tolist():
                if len(seen) < n_negative:
                    seen.add((a, b))
        negatives = np.array(sorted(seen), dtype=np.int64)
    ordered = interleave_folds([tuple(p) for p in positives.tolist()], [tuple(p) for p in negatives.tolist()], n_folds)
    pairs = np.array([[a, b] for a, b, _ in ordered], dtype=np.int64).reshape(-1, 2)
    issame = np.array([flag for *_, flag in ordered], dtype=bool)
    return pairs, issame


_ENUMERATE_LIMIT = 2_000_000  # below this many pairs in all, different pairs are drawn from the full list
