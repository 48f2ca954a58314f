"""The full profile's data beyond CASIA-WebFace itself: the InsightFace test packs, a folder of target-domain face
crops split into training and test identities, and one lazily decoded training set over both.

Notebook 05's full profile carries a model from the visible domain (a seeded CASIA-WebFace identity subset,
``train.rec``) to a target domain given as a folder of aligned face crops, one sub-folder per identity
(``<folder>/<identity>/<image>``, e.g. a thermal set). The folder's identities are split once, with seed 0, into
training identities (the few labelled images and the unlabelled remainder come from these) and test identities
(their balanced pairs are the target's test pack); the split does not depend on the run's seed, so every seed and
method is scored on the same pairs. Images are decoded when an episode or a support asks for them
(:class:`LazyChips`): a CASIA subset of ten thousand identities does not fit in memory as arrays.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from afr.data.folder import ImageFolderDataset
from afr.data.pairs import balanced_pairs
from afr.data.subsets import RelabelledSubset, dataset_labels, identity_subset
from afr.data.verification import VerificationPack, load_pack
from afr.data.benchmarks import FULL_BENCHMARKS  # the visible benchmarks (bins_dir); defined torch-free there
from afr.paths import MissingResourceError

__all__ = ["FULL_BENCHMARKS", "FullCrossDomainData", "LazyChips", "TARGET_TEST_PAIRS", "balanced_pack",
           "folder_split", "load_full_cross_domain", "load_named_packs", "open_casia"]

#: at most this many pairs (half same identity) in the target folder's test pack (LFW's size)
TARGET_TEST_PAIRS = 6000
#: the seed of the target folder's identity split and test pairs: fixed, so all runs share one test pack
SPLIT_SEED = 0


def _chip(image: np.ndarray, size: int | None) -> np.ndarray:
    """``image`` as a ``size x size`` chip (area interpolation when it is another size; None: as it is)."""
    if size is None or image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


class LazyChips(Sequence):
    """A read-only sequence of ``size x size x 3`` uint8 chips over samples of several datasets, decoded on access.

    ``parts`` is a list of ``(dataset, indices)``: item ``i`` is ``dataset[indices[j]][0]`` of the part holding it,
    resized to ``size`` when the dataset's images have another size.
    """

    def __init__(self, parts: Sequence[tuple[Any, Sequence[int]]], size: int):
        self.parts = [(dataset, np.asarray(indices, dtype=np.int64)) for dataset, indices in parts]
        self.size = int(size)
        self._ends = np.cumsum([len(indices) for _, indices in self.parts])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"chip {index} out of range (0..{len(self) - 1})")
        index = int(index) % len(self)
        part = int(np.searchsorted(self._ends, index, side="right"))
        dataset, indices = self.parts[part]
        offset = index - (int(self._ends[part - 1]) if part else 0)
        return _chip(dataset[int(indices[offset])][0], self.size)


CASIA_NEEDED = "the full profile needs train_rec: the CASIA-WebFace folder (train.rec/.idx/property)"


def open_casia(train_rec: str | Path | None):
    """The CASIA-WebFace pack (:class:`~afr.data.recordio.RecordIODataset`) of ``train_rec``; MissingResourceError
    naming ``train_rec`` when it is not given or its files are missing."""
    from afr.data.recordio import RecordIODataset

    if not train_rec:
        raise MissingResourceError(CASIA_NEEDED)
    try:
        return RecordIODataset(train_rec)
    except FileNotFoundError as error:
        raise MissingResourceError(f"train_rec: {error}") from None


def load_named_packs(folder: str | Path | None, names: Sequence[str], what: str) -> dict[str, VerificationPack]:
    """``{name: <folder>/<name>.bin}``; MissingResourceError naming the folder setting ``what`` or the missing files."""
    if not folder:
        raise MissingResourceError(f"the full profile needs {what}: the folder holding "
                                   f"{', '.join(name + '.bin' for name in names)}")
    folder = Path(folder)
    missing = [f"{name}.bin" for name in names if not (folder / f"{name}.bin").is_file()]
    if missing:
        raise MissingResourceError(f"verification packs not found in {folder}: {', '.join(missing)}")
    return {name: load_pack(folder / f"{name}.bin") for name in names}


def folder_split(labels: np.ndarray, test_identities: int | None, seed: int = SPLIT_SEED,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(training identities, test identities)`` of a folder's labels, both sorted: ``test_identities`` of them
    (default: half, rounded down) drawn with ``seed`` as the test identities, the rest for training."""
    identities = np.unique(labels)
    count = len(identities) // 2 if test_identities is None else int(test_identities)
    if not 2 <= count <= len(identities) - 1:
        raise ValueError(f"cannot hold out {count} of the folder's {len(identities)} identities as test identities "
                         "(need at least 2 and at least 1 left for training)")
    test = np.sort(np.random.default_rng([seed, 3]).choice(identities, size=count, replace=False))
    return np.setdiff1d(identities, test), test


def balanced_pack(dataset: Any, indices: Sequence[int], name: str, size: int | None = None,
                  max_pairs: int = TARGET_TEST_PAIRS, seed: int = SPLIT_SEED, sha256: str = "in-memory",
                  ) -> VerificationPack:
    """Balanced, fold-ordered pairs (:func:`~afr.data.pairs.balanced_pairs`) over the images ``indices`` of a
    labelled ``dataset``, each decoded once in memory (and resized to ``size`` when given)."""
    indices = [int(index) for index in indices]
    labels = dataset_labels(dataset)
    pairs = balanced_pairs([int(labels[index]) for index in indices], max_pairs, seed)
    chips = {position: _chip(dataset[indices[position]][0], size)
             for position in sorted({position for a, b, _ in pairs for position in (a, b)})}
    images = [chips[position] for a, b, _ in pairs for position in (a, b)]
    issame = np.array([same for *_, same in pairs], dtype=bool)
    return VerificationPack(name=name, images=images, issame=issame, sha256=sha256, path=None)


@dataclass
class FullCrossDomainData:
    """The full profile's training set (source collection ``casia`` then target ``target``) and test packs."""

    chips: LazyChips
    labels: np.ndarray
    collections: np.ndarray
    identities: np.ndarray
    image_size: int
    target_pack: VerificationPack
    source_packs: dict[str, VerificationPack]
    extra_target_packs: dict[str, VerificationPack]


def load_full_cross_domain(train_rec: str | None, num_identities: int | None, target_dir: str | None,
                           target_test_identities: int | None, bins_dir: str | None, benchmarks: Sequence[str],
                           target_bins: Sequence[str] = (), target: str = "thermal",
                           source: str = "casia", source_domains: Any = None) -> FullCrossDomainData:
    """CASIA-WebFace's seeded identity subset (seed 0, every image of each identity) as collection ``source`` (with
    ``source_domains``, a :class:`~afr.data.domain_labels.DomainLabelling` of the pack: each image's domain), the
    target folder's training identities as collection ``target`` (labels after the source's), the target folder's
    test pack, the ``benchmarks`` packs of ``bins_dir`` and the ``target_bins`` packs. Every missing input raises
    MissingResourceError naming it, checked before anything is decoded."""
    if not train_rec:
        raise MissingResourceError(CASIA_NEEDED)
    if not target_dir:
        raise MissingResourceError("the full profile needs target_dir: a folder of target-domain face crops, "
                                   "<target_dir>/<identity>/<image>")
    if not Path(target_dir).is_dir():
        raise MissingResourceError(f"target_dir not found: {target_dir}")
    missing = [path for path in target_bins if not Path(path).is_file()]
    if missing:
        raise MissingResourceError(f"target_bins not found: {', '.join(missing)}")
    source_packs = load_named_packs(bins_dir, benchmarks, "bins_dir") if benchmarks else {}
    casia = open_casia(train_rec)
    size = int(casia.image_size[0])
    subset = identity_subset(casia, num_identities, seed=SPLIT_SEED)
    if isinstance(subset, RelabelledSubset):
        source_indices, source_labels = subset.indices, subset.labels
        source_names = subset.original_labels[source_labels]
    else:
        source_indices = np.arange(len(casia))
        source_labels = source_names = dataset_labels(casia)
    folder = ImageFolderDataset(target_dir)
    train_identities, test_identities = folder_split(folder.labels, target_test_identities)
    train_indices = np.flatnonzero(np.isin(folder.labels, train_identities))
    test_indices = np.flatnonzero(np.isin(folder.labels, test_identities))
    offset = int(source_labels.max()) + 1
    relabel = {int(identity): offset + way for way, identity in enumerate(train_identities)}
    labels = np.concatenate([source_labels, [relabel[int(label)] for label in folder.labels[train_indices]]])
    identities = np.array([f"{source}/{name}" for name in source_names]
                          + [f"{target}/{folder.classes[label]}" for label in folder.labels[train_indices]], dtype=object)
    if source_domains is not None:
        source_collections = [source_domains.names[int(code)] for code in np.asarray(source_domains.codes)[source_indices]]
    else:
        source_collections = [source] * len(source_indices)
    collections = np.array(source_collections + [target] * len(train_indices))
    return FullCrossDomainData(
        chips=LazyChips([(casia, source_indices), (folder, train_indices)], size), labels=labels.astype(np.int64),
        collections=collections, identities=identities, image_size=size,
        target_pack=balanced_pack(folder, test_indices, target, size,
                                  sha256=f"folder {folder.root} test identities, seed {SPLIT_SEED}"),
        source_packs=source_packs,
        extra_target_packs={Path(path).stem: load_pack(path) for path in target_bins})
