"""Subsets of a labelled face dataset with labels renumbered 0..C-1 (N-identity and few-shot subsets)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

__all__ = ["RelabelledSubset", "dataset_labels", "holdout_identities", "identity_subset"]


def dataset_labels(dataset: Any) -> np.ndarray:
    """The integer identity label of every sample, read from ``dataset.labels`` when it has them."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64)


class RelabelledSubset(Dataset):
    """The samples ``indices`` of ``dataset`` with their identity labels renumbered ``0..C-1``.

    Labels keep their relative order (the smallest original label becomes 0). ``original_labels``
    lists, for each new label, the label it had in ``dataset``. Samples keep any extra fields
    (e.g. a domain) after the label, and the subset keeps the parent's domain labels: ``domains``
    (the parent's at ``indices``, ``None`` when the parent has none), ``domain_names`` (the parent's)
    and ``has_domains``.
    """

    def __init__(self, dataset: Any, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("RelabelledSubset needs at least one sample index")
        if self.indices.min() < 0 or self.indices.max() >= len(dataset):
            raise IndexError(f"subset indices must lie in [0, {len(dataset)}), got {self.indices.min()}..{self.indices.max()}")
        original = dataset_labels(dataset)[self.indices]
        self.original_labels = np.unique(original)
        self._new_label = {int(old): new for new, old in enumerate(self.original_labels.tolist())}
        self.labels = np.array([self._new_label[int(old)] for old in original], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.original_labels)

    @property
    def domains(self) -> np.ndarray | None:
        """The parent's domain code of every sample of the subset (int64), or ``None`` when it has none."""
        parent = getattr(self.dataset, "domains", None)
        if parent is None:
            return None
        return np.asarray(parent, dtype=np.int64)[self.indices]

    @property
    def domain_names(self) -> tuple[str, ...] | None:
        """The parent's domain names (codes keep their meaning in the subset)."""
        names = getattr(self.dataset, "domain_names", None)
        return None if names is None else tuple(names)

    @property
    def has_domains(self) -> bool:
        """Whether samples carry a domain after the label (as the parent's do)."""
        return bool(getattr(self.dataset, "has_domains", False))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        sample = self.dataset[int(self.indices[index])]
        return (sample[0], int(self.labels[index]), *sample[2:])


def holdout_identities(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` identities drawn with ``seed`` (sorted): the validation identities kept out of training.

    Drawn with a generator of its own (``[seed, 1]``), so the held-out set does not move when the
    training subset's size changes.
    """
    identities = np.unique(labels)
    if not 0 < count < len(identities):
        raise ValueError(f"cannot hold out {count} of {len(identities)} identities (need 0 < count < all)")
    return np.sort(np.random.default_rng([seed, 1]).choice(identities, size=count, replace=False))


def identity_subset(
    dataset: Any, num_identities: int | None, seed: int = 0, exclude: Sequence[int] | np.ndarray = ()
) -> Dataset:
    """All samples of ``num_identities`` identities drawn with ``seed`` (``None``: all), never from ``exclude``.

    This is how "1K / 10K identities of CASIA-WebFace" subsets are formed: a seeded draw of identities
    without replacement, every image of each drawn identity kept, labels renumbered. ``exclude`` holds
    identities reserved for validation (:func:`holdout_identities`).
    """
    labels = dataset_labels(dataset)
    identities = np.setdiff1d(np.unique(labels), np.asarray(exclude, dtype=np.int64))
    if num_identities is not None and num_identities < 1:
        raise ValueError(f"num_identities must be positive, got {num_identities}")
    if num_identities is None or num_identities >= len(identities):
        if len(exclude) == 0:
            return dataset
        chosen = identities
    else:
        chosen = np.random.default_rng(seed).choice(identities, size=num_identities, replace=False)
    return RelabelledSubset(dataset, np.flatnonzero(np.isin(labels, chosen)))
