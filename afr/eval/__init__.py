"""Evaluation: InsightFace's verification protocol and flip-test embedding extraction."""
from afr.eval.extract import chips_to_tensor, extract_embeddings, extract_unique_embeddings
from afr.eval.verification import (
    FAR_TARGETS,
    PROTOCOL_THRESHOLDS,
    VerificationResult,
    equal_error_rate,
    evaluate,
    evaluate_pairs,
    fold_splits,
    pair_distances,
    tar_at_far,
)

__all__ = [
    "FAR_TARGETS",
    "PROTOCOL_THRESHOLDS",
    "VerificationResult",
    "chips_to_tensor",
    "equal_error_rate",
    "evaluate",
    "evaluate_pairs",
    "extract_embeddings",
    "extract_unique_embeddings",
    "fold_splits",
    "pair_distances",
    "tar_at_far",
]
