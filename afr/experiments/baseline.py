"""The baseline experiment (notebook 02): a backbone zero-shot, then LoRA + CosFace, on every test domain.

Two data profiles share one code path:

* ``embedded`` (CPU default): the embedded benchmark of notebook 01 (training pack of all training
  domains, identity-disjoint validation packs in ``val/`` and test packs in ``test/``), backbone
  ``dlib-resnet29``;
* ``full`` (GPU): FRoundation's recipe, CASIA-WebFace ``train.rec`` with a seeded N-identity subset,
  ``val_identities`` further identities held out as the validation pack, and the five InsightFace
  packs (``lfw.bin`` ...) as the test, backbone ``dinov2-vits14`` or ``clip-vitb16``.

:func:`train_or_reuse` (what :func:`run_baseline`, the CLI's ``baseline`` and notebook 02 call) reuses a run whose
record exists, saying so in one line that names ``overwrite``; otherwise it calls the steps, in this order:
:func:`claim_run` (refuse to replace an earlier run's result or checkpoints), :func:`load_data` (the
training pack first, so a bad ``train.rec`` is reported before anything slow), :func:`train_lora`
(validation packs after every epoch; nothing is chosen by the test packs), :func:`score_test_packs`
(zero-shot and adapted backbone on the test packs, once, at the end), :func:`baseline_result` and
:func:`record_result` (JSON record + rows of ``results/tables/baseline.csv``).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from afr.adapters.lora import apply_lora, merge_lora, save_adapter, trainable_parameters
from afr.data.subsets import dataset_labels
from afr.data.verification import VerificationPack
# the run's data (both profiles) is the library piece afr.experiments.benchmark_data; importable here too
from afr.experiments.benchmark_data import FULL_BENCHMARKS, _full_test_packs, load_benchmark  # noqa: F401
from afr.experiments.benchmark_data import BenchmarkData as BaselineData
# scoring on packs (evaluate_on_packs, pack_evaluators) lives in afr.eval.packs; importable from here too
from afr.eval.packs import evaluate_on_packs, pack_evaluators
from afr.experiments.records import (ResultExistsError, check_outputs_writable, check_result_free, environment_info,
                                     final_validation_metrics, metric_rows, result_path, reuse_note,
                                     reuse_record, write_record)
# the settings and the published reference rows live in the torch-free settings module; importable here too
from afr.experiments.settings.baseline import PUBLISHED_FROUNDATION, BaselineSettings
from afr.models import FaceRecognitionModel, create_backbone, fast_layout
from afr.paths import runs_root
from afr.experiments.training_setup import (evaluation_device, frozen_backbone, initialise_centres, optimizer_groups,
                                           train_config, training_augment)
from afr.models.centring import embedding_centre
from afr.train import Trainer, distributed, seed_everything

__all__ = [
    "FULL_BENCHMARKS",
    "PUBLISHED_FROUNDATION",
    "BaselineData",
    "BaselineRun",
    "BaselineSettings",
    "baseline_result",
    "claim_run",
    "evaluate_on_packs",
    "evaluation_device",
    "load_data",
    "pack_evaluators",
    "record_result",
    "result_rows",
    "run_baseline",
    "run_dir",
    "score_test_packs",
    "train_lora",
    "train_or_reuse",
]


# ------------------------------------------------------------------------------------------ run folder
def run_dir(settings: BaselineSettings) -> Path:
    """The run's folder: ``output_dir`` or ``runs/<tag>``."""
    return Path(settings.output_dir) if settings.output_dir else runs_root() / settings.tag


def claim_run(settings: BaselineSettings) -> Path:
    """Check, before any work, that this run replaces nothing it was not told to; returns the run folder.

    A result already recorded under the run's tag makes it refuse unless ``overwrite`` (``resume`` continues an
    unfinished run and never replaces a finished one); checkpoints of an earlier run in its folder make it refuse
    unless ``resume`` or ``overwrite``.
    """
    if settings.resume and not settings.overwrite and result_path(settings.tag).exists():
        raise ResultExistsError(
            f"the run {settings.tag} is finished: {result_path(settings.tag)} holds its record; --resume continues "
            "only an unfinished run (pass --overwrite to train it again, or change a setting)")
    check_result_free(settings.tag, settings.overwrite)
    check_outputs_writable(settings.experiment, run_dir(settings).parent, records_folder=result_path(settings.tag).parent)
    folder = run_dir(settings)
    if not (settings.overwrite or settings.resume) and any((folder / "checkpoints").glob("checkpoint-*.pt")):
        from afr.train import RunExistsError

        raise RunExistsError(f"run folder {folder} already holds checkpoints; pass resume=True (--resume) to "
                             "continue that run or overwrite=True (--overwrite) to start it again")
    return folder


# ------------------------------------------------------------------------------------------ data
def load_data(settings: BaselineSettings) -> BaselineData:
    """The profile's training set, validation packs and test packs
    (:func:`afr.experiments.benchmark_data.load_benchmark`)."""
    return load_benchmark(settings)


# ------------------------------------------------------------------------------------------ training
def train_lora(
    backbone: nn.Module, train_dataset, settings: BaselineSettings,
    val_packs: Mapping[str, VerificationPack] | None = None,
):
    """Inject LoRA into ``backbone`` and train it with the margin loss; returns ``(model, TrainResult)``.

    ``model`` is the :class:`~afr.models.FaceRecognitionModel` (``model.backbone`` carries the
    trained, unmerged LoRA). Only LoRA matrices and class centres are trained; ``val_packs`` are
    scored after every epoch (history ``val/<pack>/<metric>``) and never decide anything by themselves.
    """
    seed_everything(settings.seed)  # LoRA's A and the class centres are drawn here: same seed, same start
    num_classes = int(getattr(train_dataset, "num_classes", 0) or len(np.unique(dataset_labels(train_dataset))))
    model = FaceRecognitionModel(backbone, num_classes, margin=settings.margin, s=settings.s, m=settings.m)
    initialise_centres(model, train_dataset, settings)  # before LoRA: B = 0 would give the same embeddings anyway
    apply_lora(backbone, settings.lora_settings())
    fast_layout(backbone)  # the same function up to rounding, less CPU time (runs recorded before 2026-12-06: without)
    notes = {"backbone": settings.backbone, "data_profile": settings.data_profile, "num_classes": num_classes,
             "tag": settings.tag}
    evaluators = pack_evaluators(val_packs) if val_packs and settings.eval_every_epoch else None
    trainer = Trainer(model, train_dataset, train_config(settings, str(run_dir(settings)), notes),
                      augment=training_augment(settings), evaluators=evaluators,
                      param_groups=optimizer_groups(model, settings))
    return model, trainer.fit(resume=settings.resume)


# ------------------------------------------------------------------------------------------ test
def score_test_packs(settings: BaselineSettings, adapted_backbone: nn.Module,
                     test_packs: Mapping[str, VerificationPack]) -> dict[str, dict[str, dict[str, Any]]]:
    """The test packs, scored once at the end: ``{"zero-shot": {pack: metrics}, "lora": {...}}``.

    The adapted backbone is scored with LoRA merged into a copy (the plain backbone's inference cost; the
    model itself keeps its adapter). The zero-shot backbone is built afresh from the same weights (and centred by the
    adapted run's centre when the run is centred).
    """
    device = evaluation_device(settings)
    zero_shot = evaluate_on_packs(frozen_backbone(settings, centre=embedding_centre(adapted_backbone)), test_packs,
                                  device=device)
    adapted = evaluate_on_packs(merge_lora(copy.deepcopy(adapted_backbone)), test_packs, device=device)
    return {"zero-shot": zero_shot, "lora": adapted}


# ------------------------------------------------------------------------------------------ results
def baseline_result(
    settings: BaselineSettings, data: BaselineData, model: FaceRecognitionModel, train_result,
    test: Mapping[str, Any] | None, wall_seconds: float,
) -> dict[str, Any]:
    """The JSON-ready record of one run: settings (seed included), training history, test metrics, machine."""
    trainable, total = trainable_parameters(model.backbone)
    return {
        "experiment": settings.experiment,
        "tag": settings.tag,
        "settings": settings.recorded_settings(),  # + world_size under torchrun
        "seed": settings.seed,
        "train": {"records": len(data.train), "identities": model.num_classes, "steps": train_result.step,
                  "history": train_result.history, "lora_trainable_parameters": trainable,
                  "backbone_parameters": total - trainable, "run_dir": str(train_result.output_dir)},
        "validation_packs": {name: {"pairs": len(pack), "sha256": pack.sha256} for name, pack in data.val_packs.items()},
        "test": dict(test) if test is not None else None,
        "environment": environment_info(evaluation_device(settings)),
        "wall_seconds": round(wall_seconds, 1),
    }


def result_rows(settings: BaselineSettings, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows of a record (methods ``zero-shot``, ``lora``; validation rows as ``split=val``)."""
    rows = []
    columns = settings.table_columns()
    for method, metrics in (result["test"] or {}).items():
        rows += metric_rows(settings.experiment, settings.tag, method, settings.seed, metrics,
                            {"split": "test", **columns})
    rows += metric_rows(settings.experiment, settings.tag, "lora", settings.seed,
                        final_validation_metrics(result["train"]["history"]), {"split": "val", **columns})
    return rows


def record_result(settings: BaselineSettings, result: Mapping[str, Any]) -> Path:
    """Write the JSON record and the tidy rows (:func:`result_rows`) into ``results/tables/baseline.csv``."""
    return write_record(result_path(settings.tag), result, settings.experiment, result_rows(settings, result),
                        overwrite=settings.overwrite, grid=settings.grid)


@dataclass
class BaselineRun:
    """One run of notebook 02: its record, where it is, whether it was reused (not trained now), and the trained
    model (None when reused)."""

    record: dict[str, Any]
    path: Path | None
    reused: bool = False
    model: FaceRecognitionModel | None = None


def train_or_reuse(settings: BaselineSettings, data: BaselineData | None = None, write: bool = True,
                   report: Callable[[str], None] | None = print) -> BaselineRun:
    """The run with ``settings``: reused when ``results/<tag>.json`` holds its record and ``overwrite`` is off (one
    line through ``report`` says so and names the parameter that retrains; ``resume`` of a finished run reuses it
    too), else trained (LoRA validated per epoch), scored once on the test packs and, with ``write``, recorded
    (adapter in ``<run dir>/adapter``, record, rows of ``results/tables/baseline.csv``). ``data``: the run's
    :func:`load_data` when the caller has it already."""
    # under torchrun (several processes) rank 0 decides (reuse, refuse), writes, scores the test packs and reports;
    # the others train with it and get the same record (distributed.on_main)
    settings.check_world_size()  # a job of several processes: batch_size splits over them
    path = result_path(settings.tag)
    report = report if distributed.job_rank() == 0 else None
    if write and distributed.on_main(lambda: path.is_file() and not settings.overwrite):
        record = distributed.on_main(lambda: reuse_record(path, settings.experiment,
                                                          lambda record: result_rows(settings, record),
                                                          grid=settings.grid))
        if report is not None:
            report(reuse_note([path], [settings.seed]))
        return BaselineRun(record, path, reused=True)
    started = time.time()
    if write:
        distributed.on_main(lambda: claim_run(settings))
    data = data if data is not None else load_data(settings)
    backbone = create_backbone(settings.backbone, settings.weights)
    model, train_result = train_lora(backbone, data.train, settings, data.val_packs)

    def finish() -> tuple[dict[str, Any], Path | None]:
        if write:
            save_adapter(model.backbone, train_result.output_dir / "adapter")
        test = score_test_packs(settings, model.backbone, data.test_packs) if settings.score_test else None
        result = baseline_result(settings, data, model, train_result, test, time.time() - started)
        return result, record_result(settings, result) if write else None

    result, recorded = distributed.on_main(finish)
    return BaselineRun(result, recorded, reused=False, model=model)


def run_baseline(settings: BaselineSettings, write: bool = True,
                 report: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train LoRA (validated per epoch), then score zero-shot and adapted backbones on the test packs once; a run
    recorded already is reused and said so (:func:`train_or_reuse`). Returns the record.

    With ``write`` the adapter goes to ``<run dir>/adapter``, the record to ``results/<tag>.json`` and
    the rows to ``results/tables/baseline.csv``.
    """
    return train_or_reuse(settings, write=write, report=report).record
