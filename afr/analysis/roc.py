"""ROC curves of a pack's pairs (scikit-learn), on the protocol's score: minus the squared L2 distance."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, roc_curve

from afr.analysis.embeddings import PackEmbedder

__all__ = ["RocCurve", "pack_roc", "roc_from_distances"]


@dataclass
class RocCurve:
    """One ROC: false- and true-accept rates at every distinct threshold, and its area."""

    model: str
    domain: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def roc_from_distances(distances: np.ndarray, issame: np.ndarray, model: str = "", domain: str = "") -> RocCurve:
    """ROC of the rule "same identity when the distance is small" (``roc_curve`` on ``-distances``)."""
    fpr, tpr, _ = roc_curve(np.asarray(issame, dtype=bool), -np.asarray(distances, dtype=np.float64))
    return RocCurve(model, domain, fpr, tpr, float(auc(fpr, tpr)))


def pack_roc(embedder: PackEmbedder, model: str, domain: str) -> RocCurve:
    """ROC of ``model`` on ``domain``'s test pack."""
    return roc_from_distances(embedder.distances(model, domain), embedder.packs[domain].issame, model, domain)
