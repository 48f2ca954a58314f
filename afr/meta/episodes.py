"""Few-shot episodes drawn per collection, for meta-learning and for adapting to a held-out collection.

An episode is an ``N``-way ``k``-shot task: ``N`` identities of one collection, ``k`` support and
``q`` query images of each, support and query disjoint. Images are dataset indices; ``labels`` are the
dataset's identity labels and ``collections`` the collection of each image (for the embedded
benchmark's training pack, :func:`afr.data.collections.training_collections`).

Every index of an episode comes from one collection. Identity labels are unique to a collection with
one exception, the low-quality chips, which share the labels of the ORL/Yale chips they were degraded
from: a low-quality episode counts and draws only the low-quality images of its identities. Excluding
an identity (``exclude_identities``) removes it from every collection.

Sampling is deterministic: episode ``index`` of a sampler with ``seed`` uses
``numpy.random.default_rng((seed, index))`` only, so any episode can be re-drawn on its own.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Episode", "EpisodeSampler", "few_shot_support"]


@dataclass(frozen=True)
class Episode:
    """One ``N``-way task of one collection.

    ``identities`` are the dataset labels of the ``N`` ways; ``support`` holds ``k`` dataset indices per
    way and ``query`` ``q`` per way, both way-major (way 0's images first), disjoint.
    """

    collection: str
    identities: tuple[int, ...]
    support: tuple[int, ...]
    query: tuple[int, ...]

    def support_labels(self) -> np.ndarray:
        """The way (``0 .. N-1``) of every support index."""
        return np.repeat(np.arange(len(self.identities)), len(self.support) // len(self.identities))

    def query_labels(self) -> np.ndarray:
        """The way (``0 .. N-1``) of every query index."""
        return np.repeat(np.arange(len(self.identities)), len(self.query) // len(self.identities))


def _group(labels: Sequence[int], collections: Sequence[str]) -> dict[str, dict[int, np.ndarray]]:
    """Collection -> identity label -> its dataset indices in that collection (ascending)."""
    labels = np.asarray(labels)
    names = np.asarray(collections)
    if labels.ndim != 1 or names.shape != labels.shape:
        raise ValueError(f"labels and collections must be 1-D and of one length, got shapes {labels.shape} "
                         f"and {names.shape}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise ValueError(f"labels must be non-negative integers, got dtype {labels.dtype}, minimum {labels.min()}")
    groups: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, (label, name) in enumerate(zip(labels.tolist(), names.tolist())):
        groups[str(name)][int(label)].append(index)
    return {name: {label: np.array(members) for label, members in sorted(by_label.items())}
            for name, by_label in sorted(groups.items())}


def _check_known(collection: str, groups: dict) -> None:
    if collection not in groups:
        raise ValueError(f"unknown collection {collection!r}; the data holds {', '.join(groups) or 'none'}")


class EpisodeSampler:
    """Draws ``n_way``-way ``k_shot``-shot episodes with ``q_query`` queries per way, one collection each.

    Args:
        labels: identity label of every dataset index.
        collections: collection name of every dataset index.
        n_way, k_shot, q_query: ways per episode (at least 2), support and query images per way (at least 1).
        allowed: the collections episodes are drawn from, visited round-robin by episode index in this
            order (default: every collection in ``collections``, sorted). Leave a held-out target out.
        exclude_identities: labels that never appear in an episode (in any collection).
        seed: non-negative; episode ``i`` depends on ``(seed, i)`` only.

    Raises ValueError (one line) when an allowed collection is unknown or has fewer than ``n_way``
    eligible identities (not excluded, with at least ``k_shot + q_query`` images in it).
    """

    def __init__(
        self,
        labels: Sequence[int],
        collections: Sequence[str],
        n_way: int,
        k_shot: int,
        q_query: int,
        allowed: Sequence[str] | None = None,
        exclude_identities: Collection[int] = (),
        seed: int = 0,
    ):
        if n_way < 2 or k_shot < 1 or q_query < 1:
            raise ValueError(f"an episode needs n_way >= 2, k_shot >= 1 and q_query >= 1, got n_way={n_way}, "
                             f"k_shot={k_shot}, q_query={q_query}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.n_way, self.k_shot, self.q_query, self.seed = int(n_way), int(k_shot), int(q_query), int(seed)
        self._groups = _group(labels, collections)
        self.allowed: tuple[str, ...] = tuple(self._groups) if allowed is None else tuple(allowed)
        if not self.allowed:
            raise ValueError("allowed names no collection: there is nothing to draw episodes from")
        self.exclude_identities = frozenset(int(label) for label in exclude_identities)
        for collection in self.allowed:
            _check_known(collection, self._groups)
            eligible = len(self.eligible_identities(collection))
            if eligible < self.n_way:
                raise ValueError(
                    f"collection {collection!r} has {eligible} eligible identities (at least "
                    f"{self.k_shot + self.q_query} images each, not excluded), fewer than n_way={self.n_way}")

    def eligible_identities(self, collection: str) -> list[int]:
        """Labels of ``collection`` that are not excluded and have at least ``k_shot + q_query`` images in it."""
        _check_known(collection, self._groups)
        return [label for label, members in self._groups[collection].items()
                if label not in self.exclude_identities and len(members) >= self.k_shot + self.q_query]

    def episode(self, index: int, collection: str | None = None) -> Episode:
        """Episode ``index`` (non-negative): of ``collection`` if given (it must be allowed), else of
        ``allowed[index % len(allowed)]``."""
        if index < 0:
            raise ValueError(f"episode index must be non-negative, got {index}")
        if collection is None:
            collection = self.allowed[index % len(self.allowed)]
        elif collection not in self.allowed:
            raise ValueError(f"collection {collection!r} is not allowed; allowed: {', '.join(self.allowed)}")
        rng = np.random.default_rng((self.seed, int(index)))
        eligible = self.eligible_identities(collection)
        ways = rng.choice(len(eligible), size=self.n_way, replace=False)
        identities, support, query = [], [], []
        for way in ways.tolist():
            label = eligible[way]
            picks = rng.choice(self._groups[collection][label], size=self.k_shot + self.q_query, replace=False)
            identities.append(label)
            support += picks[: self.k_shot].tolist()
            query += picks[self.k_shot :].tolist()
        return Episode(collection, tuple(identities), tuple(support), tuple(query))


def few_shot_support(
    labels: Sequence[int], collections: Sequence[str], collection: str, k: int, seed: int = 0
) -> dict[int, list[int]]:
    """``k`` dataset indices (ascending) per identity of ``collection``, for adapting to that collection.

    Identities with fewer than ``k`` images in the collection are skipped (the returned keys say which
    were kept). Identity ``label``'s draw uses ``numpy.random.default_rng((seed, label))`` only, so it does
    not depend on which other identities are present. Raises ValueError for an unknown collection,
    ``k < 1``, a negative seed, or a collection where no identity has ``k`` images.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    groups = _group(labels, collections)
    _check_known(collection, groups)
    support = {label: sorted(np.random.default_rng((seed, label)).choice(members, size=k, replace=False).tolist())
               for label, members in groups[collection].items() if len(members) >= k}
    if not support:
        largest = max(len(members) for members in groups[collection].values())
        raise ValueError(f"no identity of collection {collection!r} has {k} images (the most is {largest})")
    return support
