"""One DA-LoRA or LoRA training run on the embedded benchmark: the library piece of the recipes of notebooks 03 and 06.

:func:`run_method` trains one run with the method's adapter (LoRA r, LoRA K·r, or DA-LoRA with classifier, oracle or
uniform gating; the ablations give their own DA-LoRA settings and a MAML warm start), validates it per epoch on the
validation packs, scores the test packs once at the end, saves its adapter and writes its record and rows; a recorded
run is reused unless ``overwrite``. It reads its settings as an explicit
:class:`~afr.experiments.settings.dalora.DaLoraRunSettings`, which either experiment builds from its own settings
(:meth:`~afr.experiments.settings.dalora.DaLoraExperimentSettings.run_settings`,
:meth:`~afr.experiments.settings.ablations.AblationSettings.run_settings`): the run is named, recorded and tabled as
that experiment's run. Not a recipe: the recipes :mod:`afr.experiments.dalora_vs_lora` and
:mod:`afr.experiments.ablations` import it, never each other.

Oracle gating needs the domain of each test image: a test pack's domain names its expert; the wild photos
(visible light, no training identities, so no expert) go to the ``controlled`` expert, as a deployment
that knows its camera is visible-light would route them (:data:`ORACLE_EXPERT_OF`).
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from afr.adapters import save_adapter
from afr.adapters.dalora import DaLoraSettings, apply_dalora, gate_summary, merge_dalora, set_domains, set_gating
from afr.adapters.lora import LoraSettings, apply_lora, merge_lora, trainable_parameters
from afr.data.verification import VerificationPack
from afr.eval.extract import chips_to_tensor, distinct_chips
from afr.eval.packs import evaluate_on_packs, pack_evaluators
from afr.experiments.benchmark_data import BenchmarkData
from afr.experiments.records import (ResultExistsError, environment_info, final_validation_metrics, metric_rows,
                                     reuse_record, write_record)
from afr.experiments.settings.base import job_settings
from afr.experiments.settings.dalora import DISTILL_DOMAINS, DaLoraRunSettings
from afr.experiments.training_setup import (evaluation_device, initialise_centres, optimizer_groups, train_config,
                                           training_augment)
from afr.io import atomic_write_bytes, atomic_write_text
from afr.models import create_backbone
from afr.models.domain_aware import DomainAwareRecognitionModel
from afr.paths import results_root
from afr.train import Trainer, distributed, seed_everything

__all__ = ["ORACLE_EXPERT_OF", "RunOutcome", "adapt", "adapters_folder", "distill_codes", "evaluate_adapted",
           "expert_domains", "export_adapters", "gate_evaluators", "gate_table", "pack_gates", "parameter_groups",
           "record_path", "routing_accuracy", "routing_line", "run_method", "run_rows", "validation_evaluators"]

#: test domain -> the expert oracle gating routes it to (a domain with its own expert goes to it)
ORACLE_EXPERT_OF = {"wild": "controlled"}


# ------------------------------------------------------------------------------------------ adapters
def expert_domains(train_dataset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(expert domains, domain code names)`` of a training pack: one expert per domain it holds."""
    names = tuple(train_dataset.domain_names)
    present = sorted(set(np.asarray(train_dataset.domains).tolist()))
    return tuple(names[code] for code in present), names


def distill_codes(train_dataset) -> tuple[int, ...]:
    """The domain codes of the training pack's visible-light domains (:data:`DISTILL_DOMAINS`) that it holds."""
    names = tuple(train_dataset.domain_names)
    present = set(np.asarray(train_dataset.domains).tolist())
    codes = tuple(code for code, name in enumerate(names) if name in DISTILL_DOMAINS and code in present)
    if not codes:
        raise ValueError(f"lora-distill needs visible-light training images ({', '.join(DISTILL_DOMAINS)}); the "
                         f"training pack holds {sorted(names[code] for code in present)}")
    return codes


def adapt(backbone: nn.Module, settings: DaLoraRunSettings, train_dataset,
          adapter: DaLoraSettings | None = None, warm_start: Path | None = None) -> nn.Module:
    """Inject the method's adapter (LoRA r, LoRA K·r, or DA-LoRA with the method's gating) in place.

    ``adapter`` replaces the DA-LoRA settings derived from the method and the training pack, and ``warm_start``
    (a LoRA adapter of rank r) starts every expert from it: the ablations (notebook 06) use both."""
    domains, codes = expert_domains(train_dataset)
    if settings.method.startswith("lora"):
        rank = settings.rank * (len(domains) if settings.method == "lora-matched" else 1)
        return apply_lora(backbone, LoraSettings.square(rank))
    gating = settings.method.split("-", 1)[1]
    adapter = adapter or DaLoraSettings(
        r=settings.rank, alpha=float(settings.rank), domains=domains, domain_codes=codes, gating=gating,
        shared_expert=settings.shared_expert, router_hidden=settings.router_hidden)
    return apply_dalora(backbone, adapter, warm_start=warm_start)


def parameter_groups(model: nn.Module, settings: DaLoraRunSettings) -> list[dict[str, Any]]:
    """Adapters at ``lr``, class centres at ``head_lr``, the router (if any) at ``router_lr``.

    The router learns from the domain cross-entropy alone (its gates are detached from the recognition
    loss); AdamW's step does not grow with λ2, so it gets its own rate, like the class centres."""
    router = getattr(model.backbone, "dalora_router", None)
    groups = optimizer_groups(model, settings)
    if router is None:
        return groups
    router_ids = {id(p) for p in router.parameters()}
    groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in router_ids]
    return [*groups, {"params": list(router.parameters()), "lr": settings.router_lr,
                      "weight_decay": settings.weight_decay}]


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_adapted(backbone: nn.Module, method: str, packs: Mapping[str, VerificationPack],
                     device: torch.device) -> dict[str, dict[str, Any]]:
    """Test metrics of an adapted backbone: LoRA merged; DA-LoRA oracle merged per pack domain's expert;
    classifier and uniform gating unmerged (the gates vary per image or are shared by all experts)."""
    if method.startswith("lora"):
        return evaluate_on_packs(merge_lora(copy.deepcopy(backbone)), packs, device=device)
    if method == "dalora-oracle":
        results = {}
        for name, pack in packs.items():
            merged = merge_dalora(copy.deepcopy(backbone), ORACLE_EXPERT_OF.get(name, name))
            results.update(evaluate_on_packs(merged, {name: pack}, device=device))
        return results
    return evaluate_on_packs(backbone, packs, device=device)


def validation_evaluators(method: str, packs: Mapping[str, VerificationPack]) -> dict[str, Any]:
    """Per-epoch validation of every pack; with oracle gating each pack's images go to its domain's expert."""
    evaluators = pack_evaluators(packs)
    if method != "dalora-oracle":
        return evaluators

    def routed(name: str, evaluate_pack):
        def evaluate_routed(model: nn.Module) -> dict[str, float]:
            set_domains(model.backbone, [ORACLE_EXPERT_OF.get(name, name)])
            return evaluate_pack(model)

        return evaluate_routed

    return {key: routed(key.split("/", 1)[1], evaluate_pack) for key, evaluate_pack in evaluators.items()}


def pack_gates(backbone: nn.Module, images, batch_size: int = 64) -> torch.Tensor:
    """The router's gates ``(N, K)`` of every image of a pack, run once per distinct chip
    (:func:`~afr.eval.extract.distinct_chips`: a pack repeats its chips across pairs, e.g. about 160 distinct of
    the controlled pack's 1,200; a chip's gates do not depend on the batch it is in)."""
    distinct, inverse = distinct_chips(images)
    device = next(backbone.parameters()).device
    gates = []
    for start in range(0, len(distinct), batch_size):
        backbone(chips_to_tensor(distinct[start:start + batch_size], backbone.input_size).to(device))
        gates.append(backbone.dalora_router.state.gates.float().cpu())
    return torch.cat(gates)[torch.as_tensor(inverse)]


def gate_evaluators(packs: Mapping[str, VerificationPack], batch_size: int = 64) -> dict[str, Any]:
    """Per-epoch gate entropy and expert usage of the router on each validation pack (history ``gates/<pack>/...``):
    the mean over the pack's batches of ``batch_size`` images of their :func:`gate_statistics`."""

    def make(pack: VerificationPack):
        @torch.no_grad()
        def statistics(model: nn.Module) -> dict[str, float]:
            backbone = model.backbone
            gates = pack_gates(backbone, pack.images, batch_size)
            batches = [gates[start:start + batch_size] for start in range(0, len(gates), batch_size)]
            sums: dict[str, float] = {}
            for part in batches:
                for key, value in gate_summary(part, backbone.dalora_settings.domains).items():
                    sums[key] = sums.get(key, 0.0) + value / len(batches)
            return sums

        return statistics

    return {f"gates/{name}": make(pack) for name, pack in packs.items()}


@torch.no_grad()
def gate_table(backbone: nn.Module, packs: Mapping[str, VerificationPack], gating: str = "classifier",
               batch_size: int = 64) -> dict[str, dict[str, dict[str, float]]]:
    """Per pack (true domain): the mean gate of every expert (``"mean"``) and the share of images whose largest
    gate is each expert (``"argmax"``, the router's confusion matrix), under ``gating``."""
    set_gating(backbone, gating)
    backbone.eval()
    experts = list(backbone.dalora_settings.domains)
    table: dict[str, dict[str, dict[str, float]]] = {"mean": {}, "argmax": {}}
    for name, pack in packs.items():
        gates = pack_gates(backbone, pack.images, batch_size)
        shares = torch.bincount(gates.argmax(1), minlength=len(experts)).float() / len(gates)
        table["mean"][name] = dict(zip(experts, gates.mean(0).tolist()))
        table["argmax"][name] = dict(zip(experts, shares.tolist()))
    return table


def routing_accuracy(table: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Per pack of a :func:`gate_table`: the share of its images whose largest gate is its own domain's expert (the
    pack's name, or the expert :data:`ORACLE_EXPERT_OF` routes it to); a pack whose domain has no expert is left
    out."""
    accuracy = {}
    for name, shares in table["argmax"].items():
        expert = ORACLE_EXPERT_OF.get(name, name)
        if expert in shares:
            accuracy[name] = float(shares[expert])
    return accuracy


def routing_line(record: Mapping[str, Any]) -> str:
    """One line of a run record's routing accuracy per validation pack (``record["routing"]``), e.g.
    ``routing accuracy on validation: controlled 0.953, thermal 1.000, lowquality 0.998``; records from before it
    say they have none."""
    validation = (record.get("routing") or {}).get("validation")
    if not validation:
        return f"{record.get('tag', 'this run')}: no routing accuracy recorded (classifier gating records it)"
    return "routing accuracy on validation: " + ", ".join(f"{name} {value:.3f}" for name, value in validation.items())


# ------------------------------------------------------------------------------------------ one run
@dataclass
class RunOutcome:
    """One (method, seed) run: its record (as in ``results/dalora/<tag>.json``) and, when trained now, the model."""

    record: dict[str, Any]
    backbone: nn.Module | None = None
    reused: bool = False


def record_path(settings: Any) -> Path:
    """``results/<experiment>/<tag>.json`` of a run (its experiment's settings or its :class:`DaLoraRunSettings`)."""
    return results_root() / settings.experiment / f"{settings.tag}.json"


def run_method(settings: DaLoraRunSettings, data: BenchmarkData, adapter: DaLoraSettings | None = None,
               warm_start: Path | None = None, gate_statistics: bool = True, channels_last: bool = True,
               ) -> RunOutcome:
    """Train one (method, seed) run, validate it per epoch, score the test packs once; reuse a recorded run.

    ``adapter`` and ``warm_start``: see :func:`adapt` (the run's tag must tell them apart: the ablations' does).
    ``gate_statistics=False`` skips the classifier router's per-epoch gate statistics and the test gate table: each
    is one more pass over every distinct chip of every pack (:func:`pack_gates`).
    ``channels_last`` keeps the conv weights channels-last (:func:`afr.models.layout.fast_layout`): the same
    function up to rounding, about a fifth less CPU time for the dlib ResNet's convolutions (notebook 03's demo grid
    230 s -> 185 s, test AUC within 2e-4). Notebook 03's runs recorded before 2026-12-06 trained without it:
    ``channels_last=False`` reproduces them bit for bit."""
    # under torchrun (several processes) rank 0 decides (reuse or train), saves, scores the test packs and writes;
    # the others train with it and get the same record (distributed.on_main)
    path = record_path(settings)
    if distributed.on_main(lambda: path.is_file() and not settings.overwrite):
        return RunOutcome(distributed.on_main(lambda: reuse_record(
            path, settings.experiment, lambda record: run_rows(settings, record), grid=settings.grid)), reused=True)
    started = time.time()
    seed_everything(settings.seed)
    backbone = create_backbone(settings.backbone, settings.weights)
    distill = settings.method == "lora-distill"
    model = DomainAwareRecognitionModel(
        backbone, data.train.num_classes, margin=settings.margin, lambda_contrastive=settings.lambda_contrastive,
        lambda_domain=settings.lambda_domain, temperature=settings.temperature, router_view=settings.router_view,
        lambda_distill=settings.lambda_distill if distill else 0.0,
        distill_domains=distill_codes(data.train) if distill else ())
    initialise_centres(model, data.train, settings)
    adapt(backbone, settings, data.train, adapter, warm_start)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    trainable, total = trainable_parameters(backbone)
    notes = {"method": settings.method, "tag": settings.tag}
    config = train_config(settings, str(settings.run_dir), notes, sampler="identity",
                          images_per_identity=settings.images_per_identity)
    evaluators = validation_evaluators(settings.method, data.val_packs)
    if settings.method == "dalora-classifier" and gate_statistics:
        evaluators.update(gate_evaluators(data.val_packs))
    trainer = Trainer(model, data.train, config, augment=training_augment(settings),
                      evaluators=evaluators, param_groups=parameter_groups(model, settings))
    result = trainer.fit(resume=settings.resume)

    def finish() -> dict[str, Any]:
        save_adapter(backbone, result.output_dir / "adapter")  # LoRA or DA-LoRA (afr.adapters registry), with its type
        test = None
        if settings.score_test:
            test = evaluate_adapted(backbone, settings.method, data.test_packs, evaluation_device(settings))
        record = {
            "experiment": settings.experiment, "tag": settings.tag, "method": settings.method, "seed": settings.seed,
            "settings": {**settings.recorded, **job_settings(settings.batch_size)},  # + world_size under torchrun
            "train": {"steps": result.step, "history": result.history, "num_classes": data.train.num_classes,
                      "adapter_parameters": trainable,
                      "backbone_parameters": total - trainable, "run_dir": str(result.output_dir)},
            "test": test, "environment": environment_info(evaluation_device(settings)),
            "wall_seconds": round(time.time() - started, 1),
        }
        if settings.method == "dalora-classifier" and test is not None and gate_statistics:
            record["gates"] = gate_table(backbone, data.test_packs)
        if settings.method == "dalora-classifier":
            record["routing"] = {"validation": routing_accuracy(gate_table(backbone, data.val_packs))}
        write_record(path, record, settings.experiment, run_rows(settings, record), overwrite=settings.overwrite,
                     grid=settings.grid)
        return record

    record = distributed.on_main(finish)
    return RunOutcome(record, backbone)


def run_rows(settings: DaLoraRunSettings, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows of a run's record: its test metrics (split ``test``) and last epoch's validation metrics (``val``)."""
    columns = settings.table_columns()
    rows = metric_rows(settings.experiment, record["tag"], record["method"], record["seed"], record["test"] or {},
                       {"split": "test", **columns})
    rows += metric_rows(settings.experiment, record["tag"], record["method"], record["seed"],
                        final_validation_metrics(record["train"]["history"]), {"split": "val", **columns})
    return rows


# ------------------------------------------------------------------------------------------ publishing
def adapters_folder(grid: str | None) -> Path:
    """Where a grid publishes its adapters: ``results/adapters/<grid>/`` (``results/adapters/`` for runs of no
    grid; notebook 03's first grid published there too, before grids had folders of their own)."""
    return results_root() / "adapters" / grid if grid else results_root() / "adapters"


def export_adapters(outcomes: Mapping[tuple[str, int], RunOutcome], overwrite: bool = False,
                    folder: Path | None = None, required: bool = False) -> list[Path]:
    """Copy each run's adapter to ``<folder>/<method>_seed<k>/`` (default folder ``results/adapters``; atomically,
    file by file), with ``source.json`` naming the run whose record (``results/dalora/<tag>.json``) holds its
    settings and test metrics. A run whose folder is not on this machine (a reused record) is skipped, or, with
    ``required``, refused before anything is copied.

    An adapter published there by another run (another tag in its ``source.json``) is replaced only with
    ``overwrite``; otherwise :class:`ResultExistsError` is raised before anything is copied."""
    folder = results_root() / "adapters" if folder is None else Path(folder)
    chosen, absent = {}, []
    for (method, seed), outcome in outcomes.items():
        source = Path(outcome.record["train"]["run_dir"]) / "adapter"
        if not source.is_dir():
            absent.append(f"{outcome.record['tag']} ({source})")
            continue  # a reused record whose run folder is not on this machine: its committed copy stays
        chosen[method, seed] = (outcome, source, folder / f"{method}_seed{seed}")
    if absent and required:
        raise FileNotFoundError(f"no adapter on this machine for {', '.join(absent)}: these runs were trained "
                                "elsewhere; retrain them (overwrite) to publish their adapters")
    taken = [f"{target} (run {json.loads((target / 'source.json').read_text())['tag']})"
             for outcome, _, target in chosen.values()
             if (target / "source.json").is_file()
             and json.loads((target / "source.json").read_text())["tag"] != outcome.record["tag"]]
    if taken and not overwrite:
        raise ResultExistsError(f"{', '.join(taken)} already holds the adapter another run published; pass "
                                "--overwrite (overwrite=True) to replace it")
    published = []
    for (method, seed), (outcome, source, target) in chosen.items():
        target.mkdir(parents=True, exist_ok=True)
        for file in sorted(source.iterdir()):
            atomic_write_bytes(target / file.name, file.read_bytes())
        provenance = {"tag": outcome.record["tag"], "record": f"results/{outcome.record['experiment']}/"
                      f"{outcome.record['tag']}.json", "method": method, "seed": seed}
        atomic_write_text(target / "source.json", json.dumps(provenance, indent=1) + "\n")
        published.append(target)
    return published
