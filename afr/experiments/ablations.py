"""The ablation experiment (notebook 06): what each part of DA-LoRA does, and how sensitive it is to its settings.

**Component table.** Every row trains on the profile's training pack with the same data, budget, seeds and
batches as the full model; rows differ in the parts of DA-LoRA they have (:data:`COMPONENTS`):

* ``lora``: standard LoRA of rank r (no router, no contrastive term);
* ``lora+router`` (*+ domain classifier only*): one expert of rank r plus the router trained with the domain
  loss λ2·L_domain on the three domains. One expert's gate is 1 whatever the router says, and the router reads the
  frozen stem with its gates detached, so the domain loss cannot reach the adapter: the row shows what the
  auxiliary loss alone does (nothing, up to the random draws the router's initialisation shifts);
* ``dalora`` (*+ domain experts*): K = 3 experts with classifier gating, λ1 = 0;
* ``dalora+maml`` (*+ MAML initialisation*): the same, every expert warm-started from a first-order MAML start
  of the LoRA tensors meta-trained on episodes of the five training collections (:func:`run_start`);
* ``dalora+contrastive`` (*+ contrastive loss*): ``dalora`` with λ1·L_InfoNCE, no MAML start;
* ``full``: DA-LoRA with everything (experts, router, MAML start, contrastive term).

``+ MAML`` and ``+ contrastive`` each add one part to ``dalora``; ``full`` has both.

**Sensitivity** (:data:`SWEEPS`): the full model with one setting changed at a time -- the rank r, the number of
experts K (:data:`EXPERT_SCHEMES`: 2 visible|thermal, 3 the benchmark's domains, 4 orl|yale|lowquality|thermal,
5 the collections; a scheme relabels what the run calls a domain everywhere: experts, router targets, the
contrastive term's cross-domain positives and the batch sampler's domain mixing), λ1, λ2 and the MAML start's
inner steps. A sweep's default cell is the full model's run itself (the same settings, the same tag), and cells
that need the same MAML start share it.

Runs are DA-LoRA training runs (:func:`afr.experiments.dalora_run.run_method`, the library piece notebook 03's recipe
uses too; validated per epoch on the validation packs, test packs scored once at the end), handed the explicit
:class:`~afr.experiments.settings.dalora.DaLoraRunSettings` of each run's settings
(:meth:`~afr.experiments.settings.ablations.AblationSettings.run_settings`: its tag is the ablation's), with the
ablation's adapter and warm start; the MAML starts are :func:`afr.meta.meta_train`
over LoRA on the layers DA-LoRA adapts (:func:`afr.adapters.dalora.experts.shared_targets`), so that a warm-started
expert computes what the start computes. Records go to ``results/ablations/<tag>.json`` (starts too, with their
meta-training history), rows to ``results/tables/ablations.csv`` with the columns ``group`` and ``cell``; a run
whose record exists is reused unless ``overwrite``. Recommended defaults are derived from the validation metrics
only (:func:`recommended_defaults`); the test packs are reported, never used for choosing.

**Full profile** (``data_profile = "full"``, a GPU box; :func:`load_data`): notebook 03's data -- a seeded
CASIA-WebFace identity subset whose images carry the domains of ``python -m afr label-domains`` (controlled,
unconstrained, low-quality), ``val_identities`` held-out identities as the validation pack, the five InsightFace
packs as the test packs. The MAML starts' episodes are drawn from that same subset, one task per labelled domain
(notebook 04's tasks), so experts and starts see one set of images and labels. The K schemes relabel the labelled
domains (:data:`~afr.experiments.settings.ablations.FULL_EXPERT_SCHEMES`: 1, 2 = controlled and unconstrained |
low-quality, 3); K = 4 and 5 are refused by the settings. No ablation run routes by oracle.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from afr.experiments.benchmark_data import GRID_DATA_SEED, BenchmarkData, load_benchmark
from afr.experiments.dalora_run import expert_domains, record_path, run_method
from afr.experiments.records import (append_rows, check_outputs_writable, check_start_adapters, check_unfinished_runs,
                                     environment_info, final_validation_metrics, grid_metric_values, json_default,
                                     metric_rows, missing_start_error, reuse_note,
                                     write_record)
# the settings, the grid's constants and cells live in the torch-free settings module; importable here too
from afr.experiments.settings.ablations import (  # noqa: F401
    COMPONENTS, EXPERT_SCHEMES, FULL_EXPERT_SCHEMES, GROUPS, MAML_FIELDS, NATIVE_SCHEMES, ROUTER_FIELDS, SINGLE_EXPERT,
    START_FIELDS, SWEEPS, AblationSettings, Cell, expert_schemes, grid_cells, grid_runs)
from afr.io import atomic_write_text
from afr.paths import results_root
from afr.train import distributed

__all__ = ["COMPONENTS", "EXPERT_SCHEMES", "FULL_EXPERT_SCHEMES", "GROUPS", "SWEEPS", "AblationData",
           "AblationSettings", "Cell", "ExpertView", "adapter_settings", "compare_with_committed", "expert_names",
           "expert_schemes", "grid_cells", "grid_runs",
           "grid_table", "load_data", "paired_tests", "plot_results", "recommended_defaults", "run_experiment", "run_grid",
           "run_start", "summary_table", "training_view"]

# ------------------------------------------------------------------------------------------ data
@dataclass
class AblationData:
    """The profile's benchmark (training pack, validation and test packs: :class:`BenchmarkData`) and the training
    chips with their collections, which the MAML starts' episodes and the expert schemes read: on the embedded
    profile its five training collections, on the full profile each CASIA-WebFace image's labelled domain."""

    baseline: BenchmarkData
    chips: Any
    data_profile: str = "embedded"

    @property
    def collections(self) -> np.ndarray:
        return self.chips.collections

    def episode_collections(self) -> tuple[str, ...]:
        """The MAML starts' tasks: the five training collections (embedded), or every labelled domain of the
        training subset in order of appearance (full: notebook 04's tasks)."""
        from afr.data.collections import COLLECTIONS

        if self.data_profile == "embedded":
            return tuple(COLLECTIONS)
        return tuple(dict.fromkeys(self.collections.tolist()))


def load_data(settings: AblationSettings) -> AblationData:
    """The profile's benchmark and its training chips with their collections.

    Embedded: :func:`~afr.experiments.benchmark_data.load_benchmark` (the embedded benchmark) and the training
    chips in memory (:func:`afr.meta.data.load_training_chips`). Full: notebook 03's data
    (:func:`~afr.experiments.benchmark_data.load_benchmark` with domains: the CASIA-WebFace identity subset with
    its labelled domains, the held-out validation pack, the five InsightFace packs) and, over that same training
    subset, the chips decoded when an episode asks for them (:class:`~afr.data.full_profile.LazyChips`), each
    collection its image's labelled domain. Either way the chips must agree with the training pack, label for
    label and collection for domain; and when a run has a MAML start, every task must hold ``n_way`` identities
    of ``k_shot + q_query`` images (checked here, before any work)."""
    baseline = load_benchmark(settings, with_domains=True, data_seed=GRID_DATA_SEED)
    if settings.data_profile == "full":
        chips = _full_training_chips(baseline.train)
    else:
        from afr.meta.data import load_training_chips

        chips = load_training_chips(settings.embedded_root, "thermal_und")  # its target pack is not used here
    if len(chips.labels) != len(baseline.train) or not np.array_equal(chips.labels, baseline.train.labels):
        raise ValueError("the training chips and the training pack disagree: rebuild the embedded benchmark"
                         if settings.data_profile == "embedded" else
                         "the training chips and the training pack disagree (labels)")
    data = AblationData(baseline, chips, settings.data_profile)
    if settings.data_profile == "full":
        train = baseline.train
        domains = np.array(train.domain_names)[np.asarray(train.domains)]
        if not np.array_equal(domains, data.collections):
            raise ValueError("the MAML chips' collections and the training pack's domains disagree")
        if any(cell.settings.maml_start for cell in grid_cells(settings)):
            _episode_sampler(settings, data)  # a labelled domain too small for an episode: said before any work
    return data


def _full_training_chips(train):
    """The full profile's MAML chips: the training pack's own images (synthetic low-quality ones degraded, as
    the runs see them), decoded when used; labels the pack's, collections the images' labelled domains."""
    from afr.data.full_profile import LazyChips
    from afr.meta.data import MamlData

    source = train
    while not hasattr(source, "image_size") and hasattr(source, "dataset"):  # subset -> labelled pack -> RecordIO
        source = source.dataset
    size = int(np.atleast_1d(source.image_size)[0])
    collections = np.array(train.domain_names)[np.asarray(train.domains)]
    return MamlData(LazyChips([(train, np.arange(len(train)))], size), np.asarray(train.labels, dtype=np.int64),
                    collections, None, size)


def _episode_sampler(settings: AblationSettings, data: AblationData):
    """The MAML start's episodes: first-order MAML tasks over :meth:`AblationData.episode_collections`."""
    from afr.meta.episodes import EpisodeSampler

    try:
        return EpisodeSampler(data.chips.labels, data.collections, settings.n_way, settings.k_shot, settings.q_query,
                              allowed=data.episode_collections(), seed=settings.seed)
    except ValueError as error:
        if data.data_profile == "embedded":
            raise
        raise ValueError(f"the MAML start's tasks are the labelled domains of the CASIA-WebFace subset: {error} "
                         "(lower --n-way, --k-shot or --q-query, or train on more identities)") from None


def expert_names(experts: int, data_profile: str = "embedded") -> tuple[str, ...]:
    """The expert names of scheme K, in expert order (first appearance over the collections' or, on the full
    profile, the labelled domains' order)."""
    if experts == 1:
        return (SINGLE_EXPERT,)
    return tuple(dict.fromkeys(expert_schemes(data_profile)[experts].values()))


class ExpertView(Dataset):
    """The training pack with each record's domain code replaced by its expert's under a K scheme: what the
    router learns to predict, what oracle routing would use, and what the run's losses and sampler call domains."""

    def __init__(self, dataset, codes: np.ndarray, names: Sequence[str]) -> None:
        self.dataset = dataset
        self.domains = np.asarray(codes, dtype=np.int64)
        self.domain_names = tuple(names)
        self.labels = np.asarray(dataset.labels)
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label, _ = self.dataset[index]
        return image, label, int(self.domains[index])


def training_view(data: AblationData, experts: int):
    """The training set of scheme K: the pack itself for K = 1 and 3 (its own domains), else an :class:`ExpertView`
    (embedded: by each chip's collection; full: by each image's labelled domain)."""
    if experts in NATIVE_SCHEMES:
        return data.baseline.train
    names = expert_names(experts, data.data_profile)
    scheme = expert_schemes(data.data_profile)[experts]
    codes = np.array([names.index(scheme[collection]) for collection in data.collections])
    return ExpertView(data.baseline.train, codes, names)


def adapter_settings(settings: AblationSettings, train) -> Any:
    """The DA-LoRA settings of a run (None for LoRA): the training set's domains as experts, classifier gating; for
    K = 1 one expert and a router over the domains (:attr:`~afr.adapters.dalora.DaLoraSettings.router_domains`)."""
    from afr.adapters.dalora import DaLoraSettings

    if settings.method == "lora":
        return None
    domains, codes = expert_domains(train)
    common = dict(r=settings.rank, alpha=float(settings.rank), domain_codes=codes, gating="classifier",
                  router_hidden=settings.router_hidden)
    if settings.experts == 1:
        return DaLoraSettings(domains=(SINGLE_EXPERT,), router_domains=domains, **common)
    return DaLoraSettings(domains=domains, **common)


# ------------------------------------------------------------------------------------------ runs
def _record_path(tag: str) -> Path:
    return results_root() / AblationSettings.experiment / f"{tag}.json"


def run_start(settings: AblationSettings, data: AblationData, retrain: bool = False) -> Path:
    """The MAML start of ``settings`` (its adapter directory): LoRA of rank r on the layers DA-LoRA adapts,
    meta-trained with first-order MAML on episodes of all five training collections (full profile: of every
    labelled domain of the CASIA-WebFace training subset, :meth:`AblationData.episode_collections`). A start whose adapter and
    record exist is reused unless ``retrain``; its record (meta-training history, seconds per step) goes to
    ``results/ablations/<start tag>.json``. Not scored: it is an initialisation, not a result."""
    from afr.adapters.dalora.experts import shared_targets
    from afr.experiments.training_setup import evaluation_device
    from afr.meta import MetaConfig
    from afr.meta.start import meta_learned_start

    tag, run_dir = settings.start_tag, settings.start_dir
    adapter, path = run_dir / "adapter", _record_path(settings.start_tag)
    if adapter.is_dir() and path.is_file() and not retrain:
        return adapter
    rebuild = path.is_file() and not retrain  # recorded, but its adapter is not on this machine
    if rebuild and not settings.rebuild_starts:
        raise missing_start_error([f"{tag} ({adapter})"], f"the run {settings.tag}", _REBUILT)
    started = time.time()
    device = evaluation_device(settings)
    sampler = _episode_sampler(settings, data)
    config = MetaConfig(inner_steps=settings.inner_steps, inner_lr=settings.inner_lr, first_order=True,
                        meta_lr=settings.meta_lr, meta_steps=settings.meta_steps, tasks_per_step=settings.tasks_per_step,
                        seed=settings.seed, max_grad_norm=settings.meta_grad_clip,
                        stop_on_divergence=settings.stop_on_divergence)
    result = meta_learned_start(settings.backbone, settings.weights, settings.rank, data.chips, sampler, config,
                                run_dir, seed=settings.seed, device=device, targets=shared_targets, channels_last=True,
                                resume=settings.resume, progress=settings.progress,
                                overwrite=not settings.resume,  # an unfinished or unrecorded start, or told to retrain
                                ).result
    if rebuild:
        atomic_write_text(run_dir / "rebuilt.json", json.dumps(
            {"rebuilt": True, "meta_training": {"steps": result.steps, "history": result.history}},
            indent=1, default=json_default) + "\n")
        return adapter
    record = {"experiment": settings.experiment, "tag": tag, "method": "maml-start", "seed": settings.seed,
              "settings": settings.start_settings(), "collections": list(sampler.allowed),
              "meta_training": {"steps": result.steps, "history": result.history, "first_order": True,
                                "seconds_per_step": result.seconds_per_step},
              "environment": environment_info(device), "wall_seconds": round(time.time() - started, 1)}
    write_record(path, record, settings.experiment, overwrite=True)  # only reached unrecorded or told to retrain
    return adapter


#: where a rebuilt MAML start's history goes (:func:`~afr.experiments.records.missing_start_error`)
_REBUILT = "the rebuilt starts' meta-training history goes to rebuilt.json there"


def check_starts(runs: Sequence[AblationSettings]) -> None:
    """Refuse, before any work, runs still to train whose MAML start is recorded but has no adapter on this machine
    (unless ``rebuild_starts`` or ``overwrite``): :func:`afr.experiments.records.check_start_adapters`, the error
    naming every such start and the flag."""
    check_start_adapters([(run.start_tag, _record_path(run.start_tag), run.start_dir / "adapter") for run in runs
                          if run.maml_start and not (run.rebuild_starts or run.overwrite)
                          and not record_path(run).is_file()], "runs still to train", _REBUILT)


def _run(settings: AblationSettings, data: AblationData, retrained_starts: set[str]):
    """One run (:func:`afr.experiments.dalora_run.run_method` of :meth:`AblationSettings.run_settings`), its MAML
    start first when it must be trained."""
    train = training_view(data, settings.experts)
    warm_start = None
    # under torchrun rank 0 decides and meta-trains the start (one process; the others wait for its adapter)
    if settings.maml_start and distributed.on_main(lambda: settings.overwrite or not record_path(settings).is_file()):
        retrain = settings.overwrite and settings.start_tag not in retrained_starts
        warm_start = distributed.on_main(lambda: run_start(settings, data, retrain=retrain))
        retrained_starts.add(settings.start_tag)
    run_data = BenchmarkData(train, data.baseline.val_packs, data.baseline.test_packs)
    return run_method(settings.run_settings(), run_data, adapter_settings(settings, train), warm_start,
                      gate_statistics=False, channels_last=True)


#: what one of a run's rows stands for: a run serves several cells (the full model is a cell of every group), and a
#: grid may run some groups only, so a run's new rows replace its rows of the same cells and keep the others
ROW_KEY = ("run", "group", "cell")


def _rows(cells: Sequence[Cell], record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows of one run for every cell it serves: test metrics (split ``test``) and the last epoch's validation
    metrics (split ``val``), with the cell's group and value and the run's settings."""
    rows = []
    history = record["train"]["history"]
    for cell in cells:
        columns = {**cell.settings.table_columns(), "group": cell.group, "cell": cell.value}
        for split, metrics in (("test", record["test"] or {}), ("val", final_validation_metrics(history))):
            rows += metric_rows(cell.settings.experiment, record["tag"], cell.method, cell.settings.seed, metrics,
                                {"split": split, **columns})
    return rows


def run_grid(settings: AblationSettings, data: AblationData, progress: bool = True,
             report: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every distinct run of the grid (``{tag: RunOutcome}``, in the cells' order); each run's rows are written
    (for all its cells) as soon as it is done, so an interrupted grid leaves a consistent table; they replace its
    earlier rows of the same cells only (:data:`ROW_KEY`: its rows for the groups this grid does not run stay). Before any work: the
    results, tables and runs folders must accept files (:func:`~afr.experiments.records.check_outputs_writable`),
    recorded MAML starts must have their adapters (:func:`check_starts`), interrupted runs and starts are refused
    (:func:`~afr.experiments.records.check_unfinished_runs`). Runs recorded already are reused, and one line through
    ``report`` says so and names ``overwrite``."""
    from tqdm.auto import tqdm

    settings.check_world_size()  # a torchrun job of several processes: batch_size splits over them
    check_outputs_writable(settings.experiment, settings.runs_folder)
    cells = grid_cells(settings)
    by_tag: dict[str, list[Cell]] = {}
    for cell in cells:
        by_tag.setdefault(cell.settings.tag, []).append(cell)
    runs = [served[0].settings for served in by_tag.values()]
    # under torchrun rank 0 checks, writes and reports (distributed.on_main); the ranks train each run together
    distributed.on_main(lambda: check_starts(runs))
    distributed.on_main(lambda: check_unfinished_runs(
        [(record_path(run), run.run_dir) for run in runs]
        + [(_record_path(run.start_tag), run.start_dir) for run in runs if run.maml_start],
        settings.resume, settings.overwrite))
    outcomes, retrained = {}, set()
    shown = progress and distributed.job_rank() == 0
    for tag, served in tqdm(by_tag.items(), desc="ablation runs", disable=not shown):
        outcomes[tag] = _run(served[0].settings, data, retrained)
        distributed.on_main(lambda: append_rows(settings.experiment, _rows(served, outcomes[tag].record),
                                                grid=settings.grid, replaces=ROW_KEY))
    reused = [served[0].settings for tag, served in by_tag.items() if outcomes[tag].reused]
    if reused and report is not None and distributed.job_rank() == 0:
        report(reuse_note([record_path(run) for run in reused], [run.seed for run in reused]))
    return outcomes


# ------------------------------------------------------------------------------------------ tables
def grid_table(cells: Sequence[Cell], outcomes: Mapping[str, Any]):
    """Long table (group, cell, method, seed, split, domain, metric, value) of every cell, test and validation;
    flagged runs (:mod:`afr.experiments.health`) are left out, a line each printed — a run whose recorded MAML start
    diverged among them — and the flagged starts are printed apart, as starts (no row of the table)."""
    import pandas as pd

    from afr.experiments.health import excluded_note, healthy_records

    start_paths = {cell.settings.start_tag: _record_path(cell.settings.start_tag) for cell in cells
                   if cell.settings.maml_start}
    starts = {tag: json.loads(path.read_text()) for tag, path in start_paths.items() if path.is_file()}
    kept, excluded = healthy_records({**starts, **{cell.settings.tag: outcomes[cell.settings.tag] for cell in cells}},
                                     show=False)
    note = excluded_note({tag: health for tag, health in excluded.items() if tag not in starts},
                         starts={tag: health for tag, health in excluded.items() if tag in starts})
    if note:
        print(note)
    rows = []
    for cell in cells:
        if cell.settings.tag not in kept:
            continue
        record = outcomes[cell.settings.tag].record
        for split, packs in (("test", record["test"] or {}), ("val", final_validation_metrics(record["train"]["history"]))):
            for domain, metrics in packs.items():
                for metric, value in grid_metric_values(metrics):
                    rows.append({"group": cell.group, "cell": cell.value, "method": cell.method,
                                 "seed": cell.settings.seed, "split": split, "domain": domain, "metric": metric,
                                 "value": value, "tag": cell.settings.tag})
    # every run flagged: an empty table that still has its columns, so the summaries show nothing instead of failing
    return pd.DataFrame(rows, columns=["group", "cell", "method", "seed", "split", "domain", "metric", "value", "tag"])


def summary_table(table, group: str, split: str = "test", metric: str = "auc"):
    """``mean ± sd`` over seeds of one group: rows its cells (in grid order), columns the packs."""
    chosen = table[(table["group"] == group) & (table["split"] == split) & (table["metric"] == metric)]
    stats = chosen.groupby(["cell", "domain"], sort=False)["value"].agg(["mean", "std"])
    cells = stats.apply(lambda r: f"{r['mean']:.4f}" + ("" if np.isnan(r["std"]) else f" ± {r['std']:.4f}"), axis=1)
    return cells.unstack("domain")


def _default_cell(settings: AblationSettings, group: str) -> Any:
    return "full" if group == "component" else getattr(settings, group)


def paired_tests(table, settings: AblationSettings, metric: str = "auc"):
    """Paired t-tests over seeds (scipy ``ttest_rel``) of the full model against every other cell of each group
    (component rows; each sweep's other values), per test pack: mean difference and p-value."""
    import pandas as pd

    from afr.stats import paired_tests as paired

    frames = []
    test = table[table["split"] == "test"]
    for group in dict.fromkeys(test["group"]):
        part = test[test["group"] == group]
        default = _default_cell(settings, group)
        if default not in set(part["cell"]):
            continue
        frame = paired(part.assign(method=part["cell"].astype(str)), str(default), metric, by=("domain",),
                       exclude=("zero-shot",), sort=False)
        if frame.empty:  # the group has only the full model's cell
            continue
        frames.append(frame.assign(group=group, comparison=frame["comparison"].str.replace(
            f"{default} - ", "full - " if group == "component" else f"{group}={default} - {group}=", regex=False)))
    columns = ["group", "comparison", "domain", "metric", "seeds", "mean_difference", "p_value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def recommended_defaults(table, settings: AblationSettings):
    """Per sweep, the value with the highest validation AUC (last epoch), averaged over the validation packs and
    the seeds; the test packs play no part. Returns a table (group, value, validation AUC, the current default,
    and the runner-up's margin); it is a derivation to print, not a claim checked anywhere."""
    import pandas as pd

    val = table[(table["split"] == "val") & (table["metric"] == "auc") & (table["group"] != "component")]
    rows = []
    for group in dict.fromkeys(val["group"]):
        per_seed = val[val["group"] == group].groupby(["cell", "seed"])["value"].mean()
        means = per_seed.groupby("cell").agg(["mean", "std", "count"]).sort_values("mean", ascending=False)
        best = means.index[0]
        margin = float(means["mean"].iloc[0] - means["mean"].iloc[1]) if len(means) > 1 else float("nan")
        rows.append({"group": group, "recommended": best, "val_auc_mean": float(means["mean"].iloc[0]),
                     "seeds": int(means["count"].iloc[0]), "current_default": _default_cell(settings, group),
                     "val_auc_of_default": float(means["mean"].get(_default_cell(settings, group), float("nan"))),
                     "margin_over_runner_up": margin})
    return pd.DataFrame(rows)


def compare_with_committed(outcomes: Mapping[str, Any], deterministic_only: bool = True) -> str:
    """:func:`afr.experiments.reference.compare_grid_with_committed` over the runs without a MAML start (a
    meta-trained start is not reproducible across thread counts, see the README), or over every run."""
    from afr.experiments.reference import compare_grid_with_committed

    chosen = {tag: outcome for tag, outcome in outcomes.items()
              if not (deterministic_only and outcome.record["settings"]["maml_start"])}
    return compare_grid_with_committed(chosen)


# ------------------------------------------------------------------------------------------ figure
def plot_results(table, settings: AblationSettings, domains: Sequence[str] | None = None):
    """Notebook 06's figure, drawn by :func:`afr.figures.ablations.ablations_figure` (this name stays for the
    notebook's import); ``domains`` default: thermal, low quality, controlled (embedded), the test packs (full)."""
    from afr.data.benchmarks import FULL_BENCHMARKS
    from afr.figures.ablations import ablations_figure

    if domains is None:
        full = getattr(settings, "data_profile", "embedded") == "full"
        domains = (settings.benchmarks or FULL_BENCHMARKS) if full else ("thermal", "lowquality", "controlled")
    return ablations_figure(table, settings, domains)


def run_experiment(settings: AblationSettings) -> dict[str, Any]:
    """The whole of notebook 06 without its pictures; a JSON-ready summary."""
    data = load_data(settings)
    outcomes = run_grid(settings, data, progress=settings.progress)
    table = grid_table(grid_cells(settings), outcomes)
    summary = table.groupby(["group", "cell", "split", "domain", "metric"], sort=False)["value"].agg(
        ["mean", "std", "count"])
    return {"experiment": settings.experiment, "runs": list(outcomes),
            "recommended_defaults": recommended_defaults(table, settings).to_dict(orient="records"),
            "summary": summary.reset_index().to_dict(orient="records")}
