"""Face verification metrics with InsightFace's 10-fold protocol.

:func:`evaluate` reproduces the accuracy that InsightFace reports for LFW-style ``.bin`` packs
(``recognition/arcface_torch/eval/verification.py``, itself after FaceNet's ``lfw.py``):

1. embeddings are L2-normalised (``sklearn.preprocessing.normalize``, float64); pair ``i`` is rows
   ``2i`` and ``2i + 1``;
2. the score of a pair is the squared L2 distance of its two unit embeddings;
3. pair indices are split by ``KFold(n_splits=n_folds, shuffle=False)`` (contiguous folds, the first
   ``n_pairs % n_folds`` folds one pair longer);
4. for every fold, each threshold in ``np.arange(0, 4, 0.01)`` predicts "same" where
   ``distance < threshold`` (strict) on the *training* folds; the threshold with the highest accuracy
   ``(TP + TN) / n`` wins (the first one on ties, as ``np.argmax``) and is applied to the held-out fold;
5. the reported accuracy is the mean over folds and its spread ``np.std`` (population, ``ddof=0``).

InsightFace's optional PCA branch (``pca > 0``) is off by default there and is not implemented here.

Besides the protocol accuracy, :class:`VerificationResult` carries threshold-free numbers over all
pairs at once: ROC AUC and equal error rate (from ``sklearn.metrics.roc_curve`` on the negative
distance), and TAR at FAR 1e-1 … 1e-4 (``None`` where there are too few different-identity pairs to
resolve that FAR). This module evaluates one set of embeddings; it never selects among checkpoints.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

__all__ = [
    "FAR_TARGETS",
    "PROTOCOL_THRESHOLDS",
    "VerificationResult",
    "equal_error_rate",
    "evaluate",
    "evaluate_pairs",
    "fold_splits",
    "pair_distances",
    "tar_at_far",
]

#: the thresholds InsightFace scans for the protocol accuracy (squared L2 distance of unit vectors)
PROTOCOL_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.01)
#: false-accept rates at which :func:`evaluate` reports the true-accept rate
FAR_TARGETS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)


@dataclass
class VerificationResult:
    """What :func:`evaluate` measured on one set of pair embeddings.

    ``accuracy_mean``/``accuracy_std``/``fold_accuracies``/``thresholds`` follow InsightFace's
    protocol (``thresholds`` = the squared-L2 threshold chosen on the training folds of each fold).
    ``auc``, ``eer`` and ``tar_at_far`` are computed over all pairs at once; a ``tar_at_far`` entry
    is ``None`` when fewer than ``1 / FAR`` different pairs exist (see ``notes``).
    """

    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list[float]
    thresholds: list[float]
    auc: float
    eer: float
    tar_at_far: dict[float, float | None]
    n_pairs: int
    n_positive: int
    n_negative: int
    n_folds: int = 10
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict (plain floats/ints; ``tar_at_far`` keys as strings like ``"1e-03"``)."""
        data = asdict(self)
        data["tar_at_far"] = {f"{far:.0e}": value for far, value in self.tar_at_far.items()}
        return data


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance between rows ``2i`` and ``2i + 1`` after L2-normalising every row (float64)."""
    unit = normalize(np.asarray(embeddings, dtype=np.float64))
    diff = unit[0::2] - unit[1::2]
    return np.sum(np.square(diff), axis=1)


def fold_splits(n_pairs: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_indices, test_indices)`` per fold: unshuffled ``KFold``; one fold trains and tests on all."""
    indices = np.arange(n_pairs)
    if n_folds == 1:
        return [(indices, indices)]
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    if n_pairs < n_folds:
        raise ValueError(f"{n_pairs} pairs cannot be split into {n_folds} folds")
    return list(KFold(n_splits=n_folds, shuffle=False).split(indices))


def _accuracies(distances: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy ``(TP + TN) / n`` of the rule ``distance < threshold`` for every threshold at once."""
    predict_same = distances[None, :] < thresholds[:, None]
    correct = predict_same == issame[None, :]
    # integer counts divided once, as float(tp + tn) / n: identical to the per-threshold loop
    return correct.sum(axis=1) / distances.size


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where the ROC's false-accept rate equals its false-reject rate ``1 - TPR``.

    Walks the ROC (``fpr`` non-decreasing) to the first point where ``FNR - FPR <= 0`` and
    interpolates linearly between it and the point before.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = 1.0 - np.asarray(tpr, dtype=np.float64)
    gap = fnr - fpr
    crossing = int(np.argmax(gap <= 0))  # gap ends at -1 (fpr = 1, fnr = 0), so a crossing exists
    if gap[crossing] == 0 or crossing == 0:
        return float(fpr[crossing])
    before = crossing - 1
    weight = gap[before] / (gap[before] - gap[crossing])
    return float(fpr[before] + weight * (fpr[crossing] - fpr[before]))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """Highest true-accept rate of any ROC operating point whose false-accept rate is ``<= far``."""
    allowed = np.asarray(fpr) <= far
    return float(np.max(np.asarray(tpr)[allowed]))


def evaluate(
    embeddings: np.ndarray | Sequence, issame: np.ndarray | Sequence[bool], n_folds: int = 10
) -> VerificationResult:
    """Verification metrics of ``embeddings`` ``(2N, D)`` (pair ``i`` = rows ``2i``, ``2i+1``).

    ``issame`` has one boolean per pair. The accuracy follows InsightFace's protocol exactly (see the
    module docstring); ``embeddings`` need not be normalised. Raises ``ValueError`` on mismatched
    shapes, non-finite values, too few pairs for ``n_folds``, or when one class of pairs is missing.
    """
    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame)
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"embeddings must be (2N, D) with pairs in consecutive rows, got shape {embeddings.shape}")
    n_pairs = embeddings.shape[0] // 2
    if issame.ndim != 1 or issame.shape[0] != n_pairs:
        raise ValueError(f"issame must hold one flag per pair ({n_pairs}), got shape {issame.shape}")
    if not np.isin(issame, (0, 1)).all():
        raise ValueError("issame must be boolean (or 0/1)")
    issame = issame.astype(bool)
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    n_positive = int(issame.sum())
    n_negative = n_pairs - n_positive
    if n_positive == 0 or n_negative == 0:
        raise ValueError(
            f"verification needs both same and different pairs, got {n_positive} same / {n_negative} different"
        )

    distances = pair_distances(embeddings)
    fold_accuracies: list[float] = []
    best_thresholds: list[float] = []
    for train, test in fold_splits(n_pairs, n_folds):
        train_accuracy = _accuracies(distances[train], issame[train], PROTOCOL_THRESHOLDS)
        best = PROTOCOL_THRESHOLDS[int(np.argmax(train_accuracy))]
        fold_accuracies.append(float(_accuracies(distances[test], issame[test], np.array([best]))[0]))
        best_thresholds.append(float(best))

    scores = -distances  # higher = more likely the same identity
    auc = float(roc_auc_score(issame, scores))
    fpr, tpr, _ = roc_curve(issame, scores, drop_intermediate=False)
    notes: list[str] = []
    tars: dict[float, float | None] = {}
    for far in FAR_TARGETS:
        needed = math.ceil(1.0 / far - 1e-9)
        if n_negative < needed:
            tars[far] = None
            notes.append(
                f"TAR@FAR={far:.0e} not reported: {n_negative} different pairs cannot resolve it (needs >= {needed})"
            )
        else:
            tars[far] = tar_at_far(fpr, tpr, far)

    return VerificationResult(
        accuracy_mean=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        fold_accuracies=fold_accuracies,
        thresholds=best_thresholds,
        auc=auc,
        eer=equal_error_rate(fpr, tpr),
        tar_at_far=tars,
        n_pairs=n_pairs,
        n_positive=n_positive,
        n_negative=n_negative,
        n_folds=n_folds,
        notes=notes,
    )


def evaluate_pairs(
    embeddings_a: np.ndarray, embeddings_b: np.ndarray, issame: np.ndarray | Sequence[bool], n_folds: int = 10
) -> VerificationResult:
    """:func:`evaluate` for pairs given as two aligned ``(N, D)`` arrays (pair ``i`` = ``a[i]``, ``b[i]``)."""
    embeddings_a = np.asarray(embeddings_a)
    embeddings_b = np.asarray(embeddings_b)
    if embeddings_a.shape != embeddings_b.shape or embeddings_a.ndim != 2:
        raise ValueError(
            f"embeddings_a and embeddings_b must both be (N, D), got {embeddings_a.shape} and {embeddings_b.shape}"
        )
    interleaved = np.empty((2 * embeddings_a.shape[0], embeddings_a.shape[1]), dtype=np.result_type(embeddings_a, embeddings_b))
    interleaved[0::2] = embeddings_a
    interleaved[1::2] = embeddings_b
    return evaluate(interleaved, issame, n_folds=n_folds)
