"""The baseline experiment (notebook 02): a backbone zero-shot, then LoRA + CosFace, on every test domain.

Two data profiles share one code path:

* ``embedded`` (CPU default): the embedded benchmark of notebook 01 (training pack of all training
  domains, one ``.bin`` per test domain), backbone ``dlib-resnet29``;
* ``full`` (GPU): FRoundation's recipe, CASIA-WebFace ``train.rec`` with a seeded N-identity subset and
  the five InsightFace packs (``lfw.bin`` ...), backbone ``dinov2-vits14`` or ``clip-vitb16``.

Every step is a small function so the notebook reads like the method section; :func:`run_baseline`
chains them and writes one JSON result.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from afr.adapters.lora import apply_lora, merge_lora, save_adapter, trainable_parameters
from afr.data.augment import FaceAugment
from afr.data.subsets import identity_subset
from afr.data.verification import VerificationPack, load_pack
from afr.eval.extract import extract_unique_embeddings
from afr.eval.verification import evaluate
from afr.experiments.settings import BaselineSettings
from afr.models import FaceRecognitionModel, create_backbone
from afr.paths import MissingResourceError, processed_root, results_root
from afr.train import TrainConfig, Trainer, seed_everything

__all__ = [
    "FULL_BENCHMARKS",
    "PUBLISHED_FROUNDATION",
    "BaselineSettings",
    "evaluate_on_packs",
    "evaluation_device",
    "load_test_packs",
    "load_train_dataset",
    "baseline_result",
    "pack_evaluators",
    "run_baseline",
    "save_result",
    "train_lora",
]

FULL_BENCHMARKS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")

#: Published FRoundation numbers (Chettaoui et al., arXiv:2410.23831, abstract), reference rows only:
#: verification accuracy in %, averaged over LFW, CALFW, CPLFW, CFP-FP and AgeDB-30.
PUBLISHED_FROUNDATION = [
    {"model": "DINOv2 ViT-S/14", "setting": "no fine-tuning (zero-shot)", "training_data": "none", "average": 64.70},
    {"model": "DINOv2 ViT-S/14", "setting": "LoRA + CosFace", "training_data": "CASIA-WebFace 1K ids", "average": 87.10},
    {"model": "ViT-S", "setting": "trained from scratch", "training_data": "CASIA-WebFace 1K ids", "average": 69.96},
    {"model": "DINOv2 ViT-L", "setting": "LoRA + CosFace", "training_data": "large-scale", "average": 96.03},
    {"model": "CLIP ViT-L", "setting": "LoRA + CosFace", "training_data": "large-scale", "average": 95.59},
]


# ------------------------------------------------------------------------------------------ data
def load_test_packs(settings: BaselineSettings) -> dict[str, VerificationPack]:
    """The profile's verification packs, decoded (their SHA-256 recorded on each pack)."""
    if settings.data_profile == "embedded":
        from afr.data.embedded import TEST_DOMAINS, load_embedded

        benchmark = load_embedded(settings.embedded_root)
        names = settings.benchmarks or TEST_DOMAINS
        return {name: load_pack(benchmark.bin_path(name)) for name in names}
    if not settings.bins_dir:
        raise MissingResourceError("the full profile needs bins_dir: the folder holding lfw.bin, cfp_fp.bin, ...")
    folder = Path(settings.bins_dir)
    names = settings.benchmarks or FULL_BENCHMARKS
    missing = [f"{name}.bin" for name in names if not (folder / f"{name}.bin").is_file()]
    if missing:
        raise MissingResourceError(f"verification packs not found in {folder}: {', '.join(missing)}")
    return {name: load_pack(folder / f"{name}.bin") for name in names}


def load_train_dataset(settings: BaselineSettings):
    """The training set: the embedded pack, or a seeded N-identity subset of CASIA-WebFace."""
    from afr.data.recordio import RecordIODataset

    if settings.data_profile == "embedded":
        from afr.data.embedded import load_embedded

        return load_embedded(settings.embedded_root).train_dataset()
    if not settings.train_rec:
        raise MissingResourceError("the full profile needs train_rec: the CASIA-WebFace folder (train.rec/.idx/property)")
    return identity_subset(RecordIODataset(settings.train_rec), settings.num_identities, settings.seed)


# ------------------------------------------------------------------------------------------ evaluation
def evaluation_device(settings: BaselineSettings) -> torch.device:
    """Where evaluations run: the training device, by the training engine's rule for ``"auto"``."""
    return TrainConfig(device=settings.device).resolve_device()


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
    """Per-epoch validation for the :class:`~afr.train.Trainer`: accuracy and AUC on each pack."""

    def make(pack: VerificationPack) -> Callable[[nn.Module], dict[str, float]]:
        def evaluate_pack(model: nn.Module) -> dict[str, float]:
            device = next(model.parameters()).device
            embeddings = extract_unique_embeddings(model.backbone, pack.images, batch_size=batch_size, device=device)
            result = evaluate(embeddings, pack.issame)
            return {"accuracy": result.accuracy_mean, "auc": result.auc}

        return evaluate_pack

    return {f"val/{name}": make(pack) for name, pack in packs.items()}


# ------------------------------------------------------------------------------------------ training
def train_lora(
    backbone: nn.Module, train_dataset, settings: BaselineSettings,
    packs: Mapping[str, VerificationPack] | None = None, resume: bool = False,
):
    """Inject LoRA into ``backbone`` and train it with the margin loss; returns ``(model, TrainResult)``.

    ``model`` is the :class:`~afr.models.FaceRecognitionModel` (``model.backbone`` carries the
    trained, unmerged LoRA). Only LoRA matrices and class centres are trained.
    """
    seed_everything(settings.seed)  # LoRA's A and the class centres are drawn here: same seed, same start
    apply_lora(backbone, settings.lora_settings())
    num_classes = int(getattr(train_dataset, "num_classes", 0) or len(np.unique(train_dataset.labels)))
    model = FaceRecognitionModel(backbone, num_classes, margin=settings.margin, s=settings.s, m=settings.m)
    head_lr = settings.head_lr or settings.lr
    param_groups = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "weight_decay": settings.weight_decay},
        {"params": list(model.head.parameters()), "lr": head_lr, "weight_decay": settings.weight_decay},
    ]
    config = TrainConfig(
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay,
        warmup_epochs=settings.warmup_epochs, num_workers=settings.num_workers, seed=settings.seed,
        output_dir=settings.output_dir or str(Path("runs") / settings.tag), device=settings.device,
        progress=settings.progress, log_every=5,
        notes={"backbone": settings.backbone, "data_profile": settings.data_profile, "num_classes": num_classes},
    )
    evaluators = pack_evaluators(packs) if packs and settings.eval_every_epoch else None
    trainer = Trainer(model, train_dataset, config, augment=FaceAugment() if settings.augment else None,
                      evaluators=evaluators, param_groups=param_groups)
    return model, trainer.fit(resume=resume)


# ------------------------------------------------------------------------------------------ results
def baseline_result(
    settings: BaselineSettings, zero_shot: Mapping[str, Any], adapted: Mapping[str, Any], train_result,
    trainable_params: int, total_params: int, train_records: int, num_classes: int, wall_seconds: float,
) -> dict[str, Any]:
    """The JSON-ready record of one run: settings (seed included), both evaluations, the training history."""
    return {
        "experiment": "baseline",
        "settings": asdict(settings),
        "seed": settings.seed,
        "train": {"records": train_records, "identities": num_classes, "steps": train_result.step,
                  "history": train_result.history, "lora_trainable_parameters": trainable_params,
                  "backbone_parameters": total_params - trainable_params, "run_dir": str(train_result.output_dir)},
        "zero_shot": dict(zero_shot),
        "lora": dict(adapted),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(evaluation_device(settings)), "threads": torch.get_num_threads()},
        "wall_seconds": round(wall_seconds, 1),
    }


def save_result(result: Mapping[str, Any], name: str) -> Path:
    """Write ``results/<name>.json`` and return its path."""
    results_root().mkdir(parents=True, exist_ok=True)
    path = results_root() / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    return path


def run_baseline(settings: BaselineSettings, resume: bool = False, write: bool = True) -> dict[str, Any]:
    """Zero-shot evaluation, LoRA training, evaluation of the merged adapted backbone; one result dict.

    With ``write`` the result goes to ``results/<tag>.json`` and the adapter to ``<run dir>/adapter``.
    """
    started = time.time()
    packs = load_test_packs(settings)
    backbone = create_backbone(settings.backbone, settings.weights)
    device = evaluation_device(settings)
    zero_shot = evaluate_on_packs(backbone, packs, device=device)
    train_dataset = load_train_dataset(settings)
    model, train_result = train_lora(backbone, train_dataset, settings, packs, resume=resume)
    trainable, total = trainable_parameters(model.backbone)
    if write:
        save_adapter(model.backbone, train_result.output_dir / "adapter")
    adapted = evaluate_on_packs(merge_lora(model.backbone), packs, device=device)
    result = baseline_result(settings, zero_shot, adapted, train_result, trainable, total, len(train_dataset),
                             model.num_classes, time.time() - started)
    if write:
        save_result(result, settings.tag)
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
