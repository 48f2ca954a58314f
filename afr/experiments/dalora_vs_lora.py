"""The DA-LoRA experiment (notebook 03): does a mixture of domain experts beat one LoRA of the same size?

Every row trains on the same data, with the same budget, seeds, losses and batch sampler (P identities x M
images over several domains, so the contrastive term has positives); rows differ in the adapter only:

* ``lora``: LoRA of rank r;
* ``lora-matched``: LoRA of rank K·r, as many adapter parameters as K experts of rank r (the comparison
  that decides whether the mixture itself helps);
* ``dalora-classifier``: K experts of rank r mixed by the router's softmax (router trained with the
  domain cross-entropy λ2·L_domain);
* ``dalora-oracle``: the same, each image routed to its own domain's expert (one-hot from the label);
* ``dalora-uniform``: the same, every expert weighted 1/K.

All trained rows use ``L = L_margin + λ1·L_contrastive (+ λ2·L_domain where a router is trained)``. The
zero-shot backbone is scored once (it has no seed). Each (method, seed) run is validated per epoch on the
validation packs, then scored once on the test packs; its record goes to ``results/dalora/<tag>.json``,
its adapter to ``runs/<tag>/adapter`` and its rows to ``results/tables/dalora.csv``. A run whose record
exists is reused, not retrained, unless ``overwrite`` (so an interrupted grid resumes where it stopped).

Oracle gating needs the domain of each test image: a test pack's domain names its expert; the wild photos
(visible light, no training identities, so no expert) go to the ``controlled`` expert, as a deployment
that knows its camera is visible-light would route them (:data:`ORACLE_EXPERT_OF`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from afr.adapters import save_adapter
from afr.adapters.dalora import DaLoraSettings, apply_dalora, gate_statistics, merge_dalora, set_domains, set_gating
from afr.adapters.lora import LoraSettings, apply_lora, merge_lora, trainable_parameters
from afr.data.augment import FaceAugment
from afr.data.verification import VerificationPack
from afr.eval.extract import chips_to_tensor
from afr.eval.packs import evaluate_on_packs, pack_evaluators
from afr.experiments.baseline import BaselineData
from afr.experiments.records import (ResultExistsError, append_rows, check_outputs_writable, check_unfinished_runs,
                                     environment_info, final_validation_metrics, grid_metric_values, metric_rows,
                                     reuse_record, write_record, reuse_note)
# the settings, the methods and the learning-rate families live in the torch-free settings module; importable here too
from afr.experiments.settings.dalora import (FAMILY_REPRESENTATIVE, METHODS, DaLoraExperimentSettings,  # noqa: F401
                                             DaLoraRun, family)
from afr.experiments.training_setup import evaluation_device, initialise_centres, optimizer_groups, train_config
from afr.io import atomic_write_bytes, atomic_write_text
from afr.models import create_backbone
from afr.models.domain_aware import DomainAwareRecognitionModel
from afr.paths import results_root
from afr.train import Trainer, seed_everything

__all__ = ["METHODS", "ORACLE_EXPERT_OF", "DaLoraExperimentSettings", "RunOutcome", "choose_learning_rates",
           "expert_domains", "gate_table", "grid_table", "load_data", "paired_tests", "export_adapters",
           "record_zero_shot", "run_experiment", "run_grid", "run_method", "zero_shot"]

#: test domain -> the expert oracle gating routes it to (a domain with its own expert goes to it)
ORACLE_EXPERT_OF = {"wild": "controlled"}


def load_data(settings: DaLoraRun) -> BaselineData:
    """The embedded benchmark: training pack with domains, validation packs, test packs. First, before any work:
    the results, tables and runs folders must accept files (:func:`~afr.experiments.records.check_outputs_writable`)."""
    check_outputs_writable(settings.experiment, settings.runs_folder)
    from afr.experiments.baseline import BaselineSettings
    from afr.experiments.baseline import load_data as load_baseline_data

    return load_baseline_data(BaselineSettings(embedded_root=settings.embedded_root))


# ------------------------------------------------------------------------------------------ adapters
def expert_domains(train_dataset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(expert domains, domain code names)`` of a training pack: one expert per domain it holds."""
    names = tuple(train_dataset.domain_names)
    present = sorted(set(np.asarray(train_dataset.domains).tolist()))
    return tuple(names[code] for code in present), names


def adapt(backbone: nn.Module, settings: DaLoraRun, train_dataset,
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


def parameter_groups(model: nn.Module, settings: DaLoraRun) -> list[dict[str, Any]]:
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


def zero_shot(settings: DaLoraExperimentSettings, packs: Mapping[str, VerificationPack]) -> dict[str, dict]:
    """The pretrained backbone on every pack (no training, no seed)."""
    return evaluate_on_packs(create_backbone(settings.backbone, settings.weights), packs,
                             device=evaluation_device(settings))


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


def gate_evaluators(packs: Mapping[str, VerificationPack], batch_size: int = 64) -> dict[str, Any]:
    """Per-epoch gate entropy and expert usage of the router on each validation pack (history ``gates/<pack>/...``)."""

    def make(pack: VerificationPack):
        @torch.no_grad()
        def statistics(model: nn.Module) -> dict[str, float]:
            backbone = model.backbone
            device = next(backbone.parameters()).device
            sums: dict[str, float] = {}
            batches = range(0, len(pack.images), batch_size)
            for start in batches:
                backbone(chips_to_tensor(pack.images[start:start + batch_size], backbone.input_size).to(device))
                for key, value in gate_statistics(backbone).items():
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
    device = next(backbone.parameters()).device
    experts = list(backbone.dalora_settings.domains)
    table: dict[str, dict[str, dict[str, float]]] = {"mean": {}, "argmax": {}}
    for name, pack in packs.items():
        gates = []
        for start in range(0, len(pack.images), batch_size):
            backbone(chips_to_tensor(pack.images[start:start + batch_size], backbone.input_size).to(device))
            gates.append(backbone.dalora_router.state.gates.float().cpu())
        gates = torch.cat(gates)
        shares = torch.bincount(gates.argmax(1), minlength=len(experts)).float() / len(gates)
        table["mean"][name] = dict(zip(experts, gates.mean(0).tolist()))
        table["argmax"][name] = dict(zip(experts, shares.tolist()))
    return table


# ------------------------------------------------------------------------------------------ one run
@dataclass
class RunOutcome:
    """One (method, seed) run: its record (as in ``results/dalora/<tag>.json``) and, when trained now, the model."""

    record: dict[str, Any]
    backbone: nn.Module | None = None
    reused: bool = False


def record_path(settings: DaLoraRun) -> Path:
    return results_root() / settings.experiment / f"{settings.tag}.json"


def run_method(settings: DaLoraRun, data: BaselineData, adapter: DaLoraSettings | None = None,
               warm_start: Path | None = None, gate_statistics: bool = True, channels_last: bool = False,
               ) -> RunOutcome:
    """Train one (method, seed) run, validate it per epoch, score the test packs once; reuse a recorded run.

    ``adapter`` and ``warm_start``: see :func:`adapt` (the run's tag must tell them apart: the ablations' does).
    ``gate_statistics=False`` skips the classifier router's per-epoch gate statistics and the test gate table: each
    is one more pass over every image of every pack (pairs not deduplicated), more than a training epoch here.
    ``channels_last`` keeps the conv weights channels-last (:func:`afr.models.layout.fast_layout`): the same
    function up to rounding, about a fifth less CPU time for the dlib ResNet's convolutions."""
    path = record_path(settings)
    if path.is_file() and not settings.overwrite:
        return RunOutcome(reuse_record(path, settings.experiment, lambda record: run_rows(settings, record),
                                       grid=settings.grid),
                          reused=True)
    started = time.time()
    seed_everything(settings.seed)
    backbone = create_backbone(settings.backbone, settings.weights)
    model = DomainAwareRecognitionModel(
        backbone, data.train.num_classes, margin=settings.margin, lambda_contrastive=settings.lambda_contrastive,
        lambda_domain=settings.lambda_domain, temperature=settings.temperature)
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
    trainer = Trainer(model, data.train, config, augment=FaceAugment() if settings.augment else None,
                      evaluators=evaluators, param_groups=parameter_groups(model, settings))
    result = trainer.fit(resume=settings.resume)
    save_adapter(backbone, result.output_dir / "adapter")  # LoRA or DA-LoRA (afr.adapters registry), with its type
    test = None
    if settings.score_test:
        test = evaluate_adapted(backbone, settings.method, data.test_packs, evaluation_device(settings))
    record = {
        "experiment": settings.experiment, "tag": settings.tag, "method": settings.method, "seed": settings.seed,
        "settings": dataclasses.asdict(settings),
        "train": {"steps": result.step, "history": result.history, "adapter_parameters": trainable,
                  "backbone_parameters": total - trainable, "run_dir": str(result.output_dir)},
        "test": test, "environment": environment_info(evaluation_device(settings)),
        "wall_seconds": round(time.time() - started, 1),
    }
    if settings.method == "dalora-classifier" and test is not None and gate_statistics:
        record["gates"] = gate_table(backbone, data.test_packs)
    write_record(path, record, settings.experiment, run_rows(settings, record), overwrite=settings.overwrite,
                 grid=settings.grid)
    return RunOutcome(record, backbone)


def run_rows(settings: DaLoraRun, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows of a run's record: its test metrics (split ``test``) and last epoch's validation metrics (``val``)."""
    columns = settings.table_columns()
    rows = metric_rows(settings.experiment, record["tag"], record["method"], record["seed"], record["test"] or {},
                       {"split": "test", **columns})
    rows += metric_rows(settings.experiment, record["tag"], record["method"], record["seed"],
                        final_validation_metrics(record["train"]["history"]), {"split": "val", **columns})
    return rows



def run_grid(settings: DaLoraExperimentSettings, data: BaselineData,
             learning_rates: Mapping[str, float] | None = None, report: Callable[[str], None] | None = print,
             ) -> dict[tuple[str, int], RunOutcome]:
    """Every (method, seed) run of the grid, each family (LoRA, DA-LoRA) at its learning rate. Interrupted runs of
    the grid are refused before any work unless ``resume`` or ``overwrite`` (:func:`check_unfinished_runs`). Runs
    recorded already are reused, and one line through ``report`` says so and names ``overwrite``."""
    runs = {(method, seed): settings.for_run(method, seed, lr=(learning_rates or {}).get(family(method), settings.lr))
            for seed in settings.seeds for method in settings.methods}
    check_unfinished_runs([(record_path(run), run.run_dir) for run in runs.values()], settings.resume,
                          settings.overwrite)
    outcomes = {key: run_method(run, data) for key, run in runs.items()}
    reused = [key for key, outcome in outcomes.items() if outcome.reused]
    if reused and report is not None:
        report(reuse_note([record_path(runs[key]) for key in reused], [seed for _, seed in reused]))
    return outcomes


def grid_table(outcomes: Mapping[tuple[str, int], RunOutcome], zero: Mapping[str, Mapping] | None = None):
    """Long table (method, seed, domain, metric, value) of the grid's test metrics, zero-shot included."""
    import pandas as pd

    rows = []
    for (method, seed), outcome in outcomes.items():
        for domain, metrics in (outcome.record["test"] or {}).items():
            for metric, value in grid_metric_values(metrics):
                rows.append({"method": method, "seed": seed, "domain": domain, "metric": metric, "value": value})
    for seed in sorted({seed for _, seed in outcomes}):
        for domain, metrics in (zero or {}).items():
            for metric, value in grid_metric_values(metrics):
                rows.append({"method": "zero-shot", "seed": seed, "domain": domain, "metric": metric,
                             "value": value})
    return pd.DataFrame(rows)


def summary_table(table, methods, metrics=("auc", "accuracy", "eer")):
    """Notebook 03's table: "mean ± sd" over seeds (the mean alone with one seed) of each (metric, method) on each
    domain, from a long table (``method, seed, domain, metric, value``); ``methods`` in this order."""
    import pandas as pd

    summary = table.groupby(["metric", "method", "domain"])["value"].agg(["mean", "std", "count"]).reset_index()
    summary["cell"] = [f"{mean:.4f}" + (f" ± {sd:.4f}" if count > 1 else "")
                       for mean, sd, count in zip(summary["mean"], summary["std"], summary["count"])]
    pivot = summary.pivot_table(index=["metric", "method"], columns="domain", values="cell", aggfunc="first")
    domains = [domain for domain in dict.fromkeys(table["domain"]) if domain in pivot.columns]
    rows = [(metric, method) for metric in metrics for method in methods if (metric, method) in pivot.index]
    return pivot.reindex(index=pd.MultiIndex.from_tuples(rows, names=["metric", "method"]), columns=domains)


def committed_grid(grid: str = "dalora"):
    """The committed 3-seed grid as notebook 03 shows it: its test rows from the project's
    ``results/tables/dalora.csv`` (``method, seed, domain, metric, value``; rows whose ``grid`` column names
    ``grid``) and the committed records of its DA-LoRA classifier runs (their gates), whatever ``$AFR_RESULTS``
    says. ``(empty table, [])`` when nothing is committed."""
    from afr.experiments.reference import committed_grid_rows, committed_result

    rows = committed_grid_rows(DaLoraExperimentSettings.experiment, grid)
    if not len(rows):
        return rows, []
    rows = rows[rows["metric"].isin(["auc", "accuracy", "eer"])]
    runs = dict.fromkeys(rows.loc[rows["method"] == "dalora-classifier", "run"])
    records = [record for record in (committed_result(run, DaLoraExperimentSettings.experiment) for run in runs)
               if record is not None]
    return rows[["method", "seed", "domain", "metric", "value"]].reset_index(drop=True), records


def paired_tests(table, against: str = "dalora-classifier", metric: str = "auc"):
    """Paired t-test over seeds (scipy) of ``against`` vs every other trained method, per domain
    (:func:`afr.stats.paired_tests`).

    With n seeds the test has n - 1 degrees of freedom: three seeds can only flag large, consistent gaps.
    """
    from afr.stats import paired_tests as paired

    return paired(table, against, metric, by=("domain",), exclude=("zero-shot",), sort=False)


# ------------------------------------------------------------------------------------------ search, zero-shot rows
def choose_learning_rates(settings: DaLoraExperimentSettings, data: BaselineData):
    """Try ``search_lrs`` for LoRA and DA-LoRA alike (first seed, test packs never scored) and pick, per family,
    the lr with the highest mean validation AUC of the last epoch. Returns ``({family: lr}, search table)``;
    without ``search_lrs`` every family keeps ``settings.lr``."""
    import pandas as pd

    if not settings.search_lrs:
        return {name: settings.lr for name in FAMILY_REPRESENTATIVE}, pd.DataFrame()
    rows = []
    for lr in settings.search_lrs:
        for name, method in FAMILY_REPRESENTATIVE.items():
            outcome = run_method(settings.for_run(method, settings.seeds[0], lr=lr, score_test=False), data)
            aucs = {pack: metrics["auc"] for pack, metrics in final_validation_metrics(outcome.record["train"]["history"]).items()}
            rows.append({"family": name, "method": method, "lr": lr, **{f"val_auc_{k}": v for k, v in aucs.items()},
                         "val_auc_mean": float(np.mean(list(aucs.values())))})
    table = pd.DataFrame(rows)
    best = table.loc[table.groupby("family")["val_auc_mean"].idxmax()]
    return dict(zip(best["family"], best["lr"])), table


def record_zero_shot(settings: DaLoraExperimentSettings, metrics: Mapping[str, Mapping]) -> None:
    """The zero-shot rows of the table, once per seed of the grid (the same numbers: it has no seed), so
    that every method has a value for every (domain, seed)."""
    run = f"{settings.experiment}_zero-shot_{settings.for_run('lora', 0).digest()}"
    rows = []
    for seed in settings.seeds:
        rows += metric_rows(settings.experiment, run, "zero-shot", seed, metrics,
                            {"split": "test", **settings.table_columns()})
    append_rows(settings.experiment, rows, grid=settings.grid)


def run_experiment(settings: DaLoraExperimentSettings) -> dict[str, Any]:
    """The whole of notebook 03 without its pictures: search, zero-shot, grid; a JSON-ready summary."""
    data = load_data(settings)
    learning_rates, _ = choose_learning_rates(settings, data)
    zero = zero_shot(settings, data.test_packs)
    record_zero_shot(settings, zero)
    outcomes = run_grid(settings, data, learning_rates)
    if settings.publish_adapters:
        export_adapters(outcomes, overwrite=settings.overwrite)
    table = grid_table(outcomes, zero)
    summary = table.groupby(["method", "domain", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
    return {"experiment": settings.experiment, "learning_rates": learning_rates,
            "runs": {f"{method}/seed{seed}": outcome.record["tag"] for (method, seed), outcome in outcomes.items()},
            "summary": summary.to_dict(orient="records")}


def export_adapters(outcomes: Mapping[tuple[str, int], RunOutcome], overwrite: bool = False) -> list[Path]:
    """Copy each run's adapter to ``results/adapters/<method>_seed<k>/`` (atomically, file by file), with
    ``source.json`` naming the run whose record (``results/dalora/<tag>.json``) holds its settings and test metrics.

    An adapter published there by another run (another tag in its ``source.json``) is replaced only with
    ``overwrite``; otherwise :class:`ResultExistsError` is raised before anything is copied."""
    chosen = {}
    for (method, seed), outcome in outcomes.items():
        source = Path(outcome.record["train"]["run_dir"]) / "adapter"
        if not source.is_dir():
            continue  # a reused record whose run folder is not on this machine: its committed copy stays
        chosen[method, seed] = (outcome, source, results_root() / "adapters" / f"{method}_seed{seed}")
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
