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

One run is :func:`afr.experiments.dalora_run.run_method` (the library piece this recipe shares with the ablations),
handed the run's :meth:`~afr.experiments.settings.dalora.DaLoraExperimentSettings.run_settings`; its adapters, the
validation evaluators, the gate table and oracle routing (:data:`ORACLE_EXPERT_OF`) live there too and are importable
from here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from afr.data.benchmarks import FULL_BENCHMARKS
from afr.data.verification import VerificationPack
from afr.eval.packs import evaluate_on_packs
from afr.experiments.benchmark_data import GRID_DATA_SEED, BenchmarkData, load_benchmark
# one (method, seed) run and its pieces live in the library module afr.experiments.dalora_run; importable here too
from afr.experiments.dalora_run import (ORACLE_EXPERT_OF, RunOutcome, adapt, adapters_folder,  # noqa: F401
                                        evaluate_adapted, expert_domains, export_adapters, gate_evaluators,
                                        gate_table, parameter_groups, record_path, routing_accuracy, routing_line,
                                        run_method, run_rows, validation_evaluators)
from afr.experiments.records import (append_rows, check_outputs_writable, check_unfinished_runs,
                                     final_validation_metrics, grid_metric_values, metric_rows, reuse_note)
# the settings, the methods and the learning-rate families live in the torch-free settings module; importable here too
from afr.experiments.settings.dalora import (FAMILY_REPRESENTATIVE, METHODS, DaLoraExperimentSettings,  # noqa: F401
                                             DaLoraRunSettings, family)
from afr.experiments.training_setup import evaluation_device, frozen_backbone
from afr.train import distributed

__all__ = ["METHODS", "ORACLE_EXPERT_OF", "DaLoraExperimentSettings", "RunOutcome", "adapters_folder",
           "choose_learning_rates", "expert_domains", "export_adapters", "gate_table", "grid_table", "load_data",
           "paired_tests", "record_zero_shot", "routing_line", "run_experiment", "run_grid", "run_method",
           "zero_shot"]


def load_data(settings: DaLoraExperimentSettings) -> BenchmarkData:
    """The profile's training pack with domains, validation packs and test packs
    (:func:`~afr.experiments.benchmark_data.load_benchmark`): on the embedded profile its collections' domains, on
    the full profile a CASIA-WebFace identity subset with the domains of ``python -m afr label-domains``."""
    return load_benchmark(settings, with_domains=True, data_seed=GRID_DATA_SEED)


def zero_shot(settings: DaLoraExperimentSettings, data: BenchmarkData) -> dict[str, dict]:
    """The pretrained backbone on every test pack (no training, no seed; centred as the runs are)."""
    return evaluate_on_packs(frozen_backbone(settings, data.train), data.test_packs,
                             device=evaluation_device(settings))


def run_grid(settings: DaLoraExperimentSettings, data: BenchmarkData,
             learning_rates: Mapping[str, float] | None = None, report: Callable[[str], None] | None = print,
             ) -> dict[tuple[str, int], RunOutcome]:
    """Every (method, seed) run of the grid, each family (LoRA, DA-LoRA) at its learning rate. Before any work: the
    results, tables and runs folders must accept files (:func:`check_outputs_writable`), and interrupted runs of the
    grid are refused unless ``resume`` or ``overwrite`` (:func:`check_unfinished_runs`). Runs recorded already are
    reused, and one line through ``report`` says so and names ``overwrite``."""
    check_outputs_writable(settings.experiment, settings.runs_folder)
    runs = {(method, seed): settings.for_run(method, seed, lr=(learning_rates or {}).get(family(method), settings.lr))
            for seed in settings.seeds for method in settings.methods}
    distributed.on_main(lambda: check_unfinished_runs([(record_path(run), run.run_dir) for run in runs.values()],
                                                      settings.resume, settings.overwrite))  # torchrun: rank 0's say
    outcomes = {key: run_method(run.run_settings(), data) for key, run in runs.items()}
    reused = [key for key, outcome in outcomes.items() if outcome.reused]
    if reused and report is not None and distributed.job_rank() == 0:
        report(reuse_note([record_path(runs[key]) for key in reused], [seed for _, seed in reused]))
    return outcomes


def grid_table(outcomes: Mapping[tuple[str, int], RunOutcome], zero: Mapping[str, Mapping] | None = None):
    """Long table (method, seed, domain, metric, value) of the grid's test metrics, zero-shot included; flagged runs
    (:mod:`afr.experiments.health`: not fitted, collapsed) are left out, a line each printed."""
    import pandas as pd

    from afr.experiments.health import healthy_records

    seeds = sorted({seed for _, seed in outcomes})
    outcomes, _ = healthy_records(outcomes)
    rows = []
    for (method, seed), outcome in outcomes.items():
        for domain, metrics in (outcome.record["test"] or {}).items():
            for metric, value in grid_metric_values(metrics):
                rows.append({"method": method, "seed": seed, "domain": domain, "metric": metric, "value": value})
    for seed in seeds:
        for domain, metrics in (zero or {}).items():
            for metric, value in grid_metric_values(metrics):
                rows.append({"method": "zero-shot", "seed": seed, "domain": domain, "metric": metric,
                             "value": value})
    return pd.DataFrame(rows, columns=["method", "seed", "domain", "metric", "value"])  # columns even when empty


def with_benchmark_average(table):
    """``table`` (``method, seed, domain, metric, value``) plus, where a (method, seed, metric) has all five
    InsightFace packs, a row ``domain = "average"``: their mean (FRoundation's headline number)."""
    import pandas as pd

    five = table[table["domain"].isin(FULL_BENCHMARKS)]
    if not len(five):
        return table
    groups = five.groupby(["method", "seed", "metric"])["value"]
    complete = groups.count() == len(FULL_BENCHMARKS)
    average = groups.mean()[complete].reset_index().assign(domain="average")
    return pd.concat([table, average[["method", "seed", "domain", "metric", "value"]]], ignore_index=True)


def summary_table(table, methods, metrics=("auc", "accuracy", "eer")):
    """Notebook 03's table: "mean ± sd" over seeds (the mean alone with one seed) of each (metric, method) on each
    domain, from a long table (``method, seed, domain, metric, value``); ``methods`` in this order. On the full
    profile the five InsightFace packs get their average (:func:`with_benchmark_average`) as the last column."""
    import pandas as pd

    table = with_benchmark_average(table)

    summary = table.groupby(["metric", "method", "domain"])["value"].agg(["mean", "std", "count"]).reset_index()
    summary["cell"] = [f"{mean:.4f}" + (f" ± {sd:.4f}" if count > 1 else "")
                       for mean, sd, count in zip(summary["mean"], summary["std"], summary["count"])]
    pivot = summary.pivot_table(index=["metric", "method"], columns="domain", values="cell", aggfunc="first")
    domains = [domain for domain in dict.fromkeys(table["domain"]) if domain in pivot.columns]
    rows = [(metric, method) for metric in metrics for method in methods if (metric, method) in pivot.index]
    return pivot.reindex(index=pd.MultiIndex.from_tuples(rows, names=["metric", "method"]), columns=domains)


def committed_grid(grid: str | None = None):
    """The committed 3-seed grid as notebook 03 shows it: its test rows from the project's
    ``results/tables/dalora.csv`` (``method, seed, domain, metric, value``; rows whose ``grid`` column names
    ``grid``, default the committed grid's: :class:`~afr.experiments.grids.CommittedGrids`) and the committed records
    of its DA-LoRA classifier runs (their gates), whatever ``$AFR_RESULTS``
    says, without the flagged runs (:func:`afr.experiments.health.healthy_rows`, a line each printed).
    ``(empty table, [])`` when nothing is committed."""
    from afr.experiments.reference import committed_grid_rows, committed_result

    from afr.experiments.health import excluded_note, healthy_rows
    from afr.paths import PROJECT_ROOT

    from afr.experiments.grids import CommittedGrids

    rows = committed_grid_rows(DaLoraExperimentSettings.experiment, grid or CommittedGrids().dalora.grid)
    if not len(rows):
        return rows, []
    rows, excluded = healthy_rows(rows, PROJECT_ROOT / "results", report=True)
    if excluded:
        print(excluded_note(excluded))
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
def choose_learning_rates(settings: DaLoraExperimentSettings, data: BenchmarkData):
    """Try ``search_lrs`` for LoRA and DA-LoRA alike (first seed, test packs never scored) and pick, per family,
    the lr with the highest mean validation AUC of the last epoch. Returns ``({family: lr}, search table)``;
    without ``search_lrs`` every family keeps ``settings.lr``. With them, before any work: the results, tables and
    runs folders must accept files (:func:`check_outputs_writable`)."""
    import pandas as pd

    if not settings.search_lrs:
        return {name: settings.lr for name in FAMILY_REPRESENTATIVE}, pd.DataFrame()
    check_outputs_writable(settings.experiment, settings.runs_folder)
    rows = []
    for lr in settings.search_lrs:
        for name, method in FAMILY_REPRESENTATIVE.items():
            outcome = run_method(settings.for_run(method, settings.seeds[0], lr=lr, score_test=False).run_settings(),
                                 data)
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
    settings.check_world_size()  # a job of several processes: batch_size splits over them
    data = load_data(settings)
    learning_rates, _ = choose_learning_rates(settings, data)
    # under torchrun rank 0 scores and writes (distributed.on_main); the ranks train the runs together
    zero = distributed.on_main(lambda: zero_shot(settings, data))
    distributed.on_main(lambda: record_zero_shot(settings, zero))
    outcomes = run_grid(settings, data, learning_rates)
    if settings.publish_adapters:
        distributed.on_main(lambda: export_adapters(outcomes, overwrite=settings.overwrite,
                                                    folder=adapters_folder(settings.grid)))
    table = grid_table(outcomes, zero)
    summary = table.groupby(["method", "domain", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
    return {"experiment": settings.experiment, "learning_rates": learning_rates,
            "runs": {f"{method}/seed{seed}": outcome.record["tag"] for (method, seed), outcome in outcomes.items()},
            "summary": summary.to_dict(orient="records")}
