"""Accept / reject decisions of every pair: at the 10-fold protocol's thresholds, or at one chosen threshold.

InsightFace's protocol (:func:`afr.eval.verification.evaluate`) picks a threshold per fold on the other nine
folds and applies it to the held-out fold, so "the protocol threshold" of a pair is its own fold's threshold.
:func:`protocol_decisions` takes those thresholds from :func:`~afr.eval.verification.evaluate` itself (and its
folds from :func:`~afr.eval.verification.fold_splits`), so its accuracy is the protocol's accuracy and its false
accepts / rejects are the pairs the protocol gets wrong. :func:`at_threshold` is the rule with one threshold for
every pair (what the explorer's slider moves); both use the protocol's strict rule ``distance < threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from afr.eval.verification import evaluate, fold_splits, pair_distances

__all__ = ["OperatingPoint", "ProtocolDecisions", "at_threshold", "protocol_decisions"]


@dataclass
class OperatingPoint:
    """Rates of one decision rule over a pack: accuracy, false-accept and false-reject rates, and counts."""

    accuracy: float
    far: float
    frr: float
    false_accepts: int
    false_rejects: int
    n_positive: int
    n_negative: int


def _rates(accept: np.ndarray, issame: np.ndarray, accuracy: float | None = None) -> OperatingPoint:
    false_accepts = int(np.sum(accept & ~issame))
    false_rejects = int(np.sum(~accept & issame))
    n_positive, n_negative = int(issame.sum()), int((~issame).sum())
    if accuracy is None:
        accuracy = float(np.mean(accept == issame))
    return OperatingPoint(accuracy, false_accepts / max(n_negative, 1), false_rejects / max(n_positive, 1),
                          false_accepts, false_rejects, n_positive, n_negative)


@dataclass
class ProtocolDecisions:
    """Every pair's distance, fold, protocol threshold and decision; ``point`` holds the resulting rates.

    ``point.accuracy`` is the mean of the folds' accuracies, exactly what
    :func:`afr.eval.verification.evaluate` reports as ``accuracy_mean``.
    """

    distances: np.ndarray
    issame: np.ndarray
    fold: np.ndarray
    fold_thresholds: np.ndarray
    point: OperatingPoint

    @property
    def thresholds(self) -> np.ndarray:
        """The protocol threshold that decides each pair (its fold's)."""
        return self.fold_thresholds[self.fold]

    @property
    def accept(self) -> np.ndarray:
        return self.distances < self.thresholds

    @property
    def false_accepts(self) -> np.ndarray:
        """Indices of different-identity pairs the protocol accepts."""
        return np.flatnonzero(self.accept & ~self.issame)

    @property
    def false_rejects(self) -> np.ndarray:
        """Indices of same-identity pairs the protocol rejects."""
        return np.flatnonzero(~self.accept & self.issame)


def protocol_decisions(embeddings: np.ndarray, issame: np.ndarray, n_folds: int = 10) -> ProtocolDecisions:
    """The protocol's decision on every pair of ``embeddings`` ``(2N, D)`` (see the module docstring)."""
    issame = np.asarray(issame, dtype=bool)
    result = evaluate(embeddings, issame, n_folds=n_folds)
    distances = pair_distances(embeddings)
    fold = np.empty(len(issame), dtype=np.int64)
    for index, (_, test) in enumerate(fold_splits(len(issame), n_folds)):
        fold[test] = index
    thresholds = np.asarray(result.thresholds, dtype=np.float64)
    accept = distances < thresholds[fold]
    fold_accuracy = [np.mean(accept[fold == k] == issame[fold == k]) for k in range(n_folds)]
    point = _rates(accept, issame, float(np.mean(fold_accuracy)))
    return ProtocolDecisions(distances, issame, fold, thresholds, point)


def at_threshold(distances: np.ndarray, issame: np.ndarray, threshold: float) -> OperatingPoint:
    """Rates of the rule "same identity when ``distance < threshold``" with one threshold for all pairs."""
    distances = np.asarray(distances, dtype=np.float64)
    return _rates(distances < threshold, np.asarray(issame, dtype=bool))
