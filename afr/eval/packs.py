"""Scoring a backbone on named verification packs: once at the end of a run (:func:`evaluate_on_packs`) and per
epoch during training (:func:`pack_evaluators`), InsightFace's protocol (flip test, 10 folds) on each."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from afr.data.verification import VerificationPack
from afr.eval.extract import extract_unique_embeddings
from afr.eval.verification import evaluate

__all__ = ["evaluate_on_packs", "pack_evaluators"]


def evaluate_on_packs(
    backbone: nn.Module, packs: Mapping[str, VerificationPack], device: str | torch.device = "cpu",
    batch_size: int = 64, progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """InsightFace's protocol (flip test, 10 folds) on every pack: ``{pack: metrics dict}``."""
    results = {}
    for name, pack in packs.items():
        embeddings = extract_unique_embeddings(backbone, pack.images, batch_size=batch_size, device=device,
                                               progress=progress)
        results[name] = {**evaluate(embeddings, pack.issame).to_dict(), "sha256": pack.sha256}
    return results


def pack_evaluators(packs: Mapping[str, VerificationPack], batch_size: int = 64) -> dict[str, Callable]:
    """Per-epoch validation for the :class:`~afr.train.Trainer`: accuracy and AUC on each validation pack."""

    def make(pack: VerificationPack) -> Callable[[nn.Module], dict[str, float]]:
        def evaluate_pack(model: nn.Module) -> dict[str, float]:
            device = next(model.parameters()).device
            embeddings = extract_unique_embeddings(model.backbone, pack.images, batch_size=batch_size, device=device)
            result = evaluate(embeddings, pack.issame)
            return {"accuracy": result.accuracy_mean, "auc": result.auc}

        return evaluate_pack

    return {f"val/{name}": make(pack) for name, pack in packs.items()}
