"""Verification pairs in the order the 10-fold protocol expects: every fold holds both classes.

InsightFace's protocol splits the pair list into contiguous, unshuffled folds, so a pack must be laid
out in blocks (as LFW is: per fold, its same pairs then its different pairs).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def interleave_folds(positives: Sequence, negatives: Sequence, n_folds: int = 10) -> list[tuple]:
    """Lay pairs out as ``n_folds`` blocks, block k = k-th share of positives then of negatives.

    Items are returned as ``(*item, True)`` for positives and ``(*item, False)`` for negatives.
    """
    pos_chunks = np.array_split(np.arange(len(positives)), n_folds)
    neg_chunks = np.array_split(np.arange(len(negatives)), n_folds)
    ordered: list[tuple] = []
    for pos_idx, neg_idx in zip(pos_chunks, neg_chunks):
        ordered += [(*positives[i], True) for i in pos_idx]
        ordered += [(*negatives[i], False) for i in neg_idx]
    return ordered


def same_identity_pairs(labels: np.ndarray | Sequence) -> np.ndarray:
    """All ``(i, j)``, ``i < j``, with equal labels, as an ``(P, 2)`` int64 array sorted by ``i`` then ``j``."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(labels[order][1:] != labels[order][:-1]) + 1
    blocks = []
    for members in np.split(order, boundaries):
        first, second = np.triu_indices(len(members), k=1)
        blocks.append(np.stack([members[first], members[second]], axis=1))
    pairs = np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def balanced_pairs(
    identities: Sequence[str], max_pairs: int, seed: int, n_folds: int = 10
) -> list[tuple[int, int, bool]]:
    """Balanced same/different index pairs over ``identities`` (one entry per image), fold-ordered.

    Takes up to ``max_pairs // 2`` same-identity pairs (all of them if fewer exist, else a seeded
    sample) and exactly as many different-identity pairs, drawn with the same seed, no repeats.
    """
    if max_pairs < 2:
        raise ValueError(f"max_pairs must be at least 2, got {max_pairs}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(identities)
    positives = [tuple(pair) for pair in same_identity_pairs(labels).tolist()]
    if not positives:
        raise ValueError("no identity has two images: cannot form same-identity pairs")
    n_negative_possible = len(labels) * (len(labels) - 1) // 2 - len(positives)
    if len(positives) > max_pairs // 2:
        keep = np.sort(rng.choice(len(positives), size=max_pairs // 2, replace=False))
        positives = [positives[k] for k in keep]
    if n_negative_possible < len(positives):
        raise ValueError("too few different-identity pairs to balance the same-identity pairs")
    negatives: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(negatives) < len(positives):
        i, j = sorted(rng.choice(len(labels), size=2, replace=False).tolist())
        if labels[i] != labels[j] and (i, j) not in seen:
            seen.add((i, j))
            negatives.append((i, j))
    return interleave_folds(positives, negatives, n_folds)
