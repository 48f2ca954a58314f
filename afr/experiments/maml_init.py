"""The MAML experiment (notebook 04): does a meta-learned LoRA initialisation adapt to a new domain faster?

The source collections (ORL, Yale, low quality, PUJ-T360 thermal) are the meta-training tasks; the target
collection (default: Notre Dame thermal) is held out: none of its identities is seen before adaptation. Every
row starts from the same pretrained backbone with LoRA of rank r and differs in how the LoRA tensors start:

* ``maml``: meta-learned over source episodes, second order (the meta-gradient flows through the inner steps);
* ``fomaml``: the same with the second-order terms dropped (first-order MAML);
* ``pooled-lora``: trained on the same episodes with the same number of outer steps and the same optimiser, but
  without the inner loop (``inner_steps = 0``): multi-task training on the pooled source collections, the
  baseline MAML has to beat;
* ``random``: no meta-training; LoRA's own start (A Kaiming, B zero), i.e. the pretrained backbone; at step 0
  it is the ``zero-shot`` row.

Adaptation to the target is the inner loop itself: plain SGD at ``inner_lr`` on the k images per training
identity of the target collection (class centres = the support images' mean embeddings, CosFace), evaluated on
the target's test identities after each of ``steps``. One record per (method, seed) in
``results/maml/<tag>.json`` with the meta-training history and the curves for every k; rows in
``results/tables/maml.csv`` with columns ``shots`` and ``steps``.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from afr.adapters.dalora.experts import load_parameters
from afr.adapters.lora import trainable_parameters
from afr.eval.packs import evaluate_on_packs
from afr.eval.curves import StartScore
from afr.experiments.records import (check_outputs_writable, check_unfinished_runs, environment_info,
                                     grid_metric_values, metric_rows, reuse_note, reuse_record, write_record,
                                     GridRuns)
# the settings and the methods live in the torch-free settings module; importable here too
from afr.experiments.settings.maml import META_VARIANTS, METHODS, MamlExperimentSettings  # noqa: F401
from afr.validation import SettingsError
from afr.experiments.training_setup import evaluation_device
from afr.losses.margin import CosFaceMargin
from afr.meta import adapter_parameters, inner_adapt
# MamlData and task_batches live in afr.meta.data; importable from here too
from afr.meta.data import MamlData, load_training_chips, task_batches  # noqa: F401
from afr.meta.episodes import EpisodeSampler, few_shot_support
from afr.meta.start import meta_learned_start
from afr.models import fast_layout
from afr.paths import results_root
from afr.train import distributed

__all__ = ["METHODS", "ChosenAdaptation", "MamlData", "MamlExperimentSettings", "adaptation_curves", "chosen_table",
           "curve_table", "episode_sampler", "validation_chosen_adaptation",
           "load_data", "run_method", "run_grid"]



# ------------------------------------------------------------------------------------------ data
def load_data(settings: MamlExperimentSettings) -> MamlData:
    """The training chips in memory and the target collection's test pack
    (:func:`afr.meta.data.load_training_chips`); the full profile's: :func:`load_full_data`."""
    if settings.data_profile == "full":
        return load_full_data(settings)
    return load_training_chips(settings.embedded_root, settings.target,
                               with_validation=settings.choose_steps_on_validation)


def load_full_data(settings: MamlExperimentSettings) -> MamlData:
    """The full profile: a seeded CASIA-WebFace identity subset whose images' collections are their labelled domains
    (``domain_labels``), and the target folder's training identities as collection ``thermal``; decoded when used
    (:func:`afr.data.full_profile.load_full_cross_domain`). ``settings.sources`` left empty becomes every labelled
    domain; a named source that no image holds is refused."""
    from afr.data.full_profile import load_full_cross_domain
    from afr.experiments.benchmark_data import open_domain_labels

    labels = open_domain_labels(settings)
    full = load_full_cross_domain(settings.train_rec, settings.num_identities, settings.target_dir,
                                  settings.target_test_identities, None, (), target=settings.target,
                                  source_domains=labels)
    data = MamlData(full.chips, full.labels, full.collections, full.target_pack, full.image_size)
    present = source_collections(dataclasses.replace(settings, sources=()), data)
    unknown = [source for source in settings.sources if source not in present]
    if unknown:
        raise SettingsError(f"--sources: {unknown} are not domains of the CASIA-WebFace subset (labelled: "
                            f"{', '.join(present)})", "sources")
    return data


def source_collections(settings: MamlExperimentSettings, data: MamlData) -> tuple[str, ...]:
    """The meta-training collections: ``settings.sources``, or (empty) every collection of ``data`` but the
    target, in order of appearance."""
    return settings.sources or tuple(dict.fromkeys(
        collection for collection in data.collections.tolist() if collection != settings.target))


def episode_sampler(settings: MamlExperimentSettings, data: MamlData) -> EpisodeSampler:
    """The run's meta-training episodes: drawn from ``settings.sources`` only (never the held-out target) with the
    run's seed."""
    return EpisodeSampler(data.labels, data.collections, settings.n_way, settings.k_shot, settings.q_query,
                          allowed=source_collections(settings, data), seed=settings.seed)


# ------------------------------------------------------------------------------------------ one run
def initialisation(settings: MamlExperimentSettings, data: MamlData) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone with LoRA, its LoRA tensors meta-trained as the method says
    (:func:`afr.meta.start.meta_learned_start`, adapter saved under ``<run dir>/adapter``); and the meta-training
    summary."""
    meta = settings.method != "random"
    config = settings.meta_config() if meta else None
    start = meta_learned_start(settings.backbone, settings.weights, settings.rank, data,
                               episode_sampler(settings, data) if meta else None, config, settings.run_dir,
                               seed=settings.seed, device=evaluation_device(settings), resume=settings.resume,
                               progress=settings.progress, overwrite=settings.overwrite, data_parallel=True)
    if start.result is None:
        return start.backbone, {"steps": 0}
    result = start.result
    return start.backbone, {"steps": result.steps, "history": result.history,
                            "seconds_per_step": result.seconds_per_step, "first_order": config.first_order,
                            "inner_steps": config.inner_steps}


def _adapted(backbone: nn.Module, data: MamlData, settings: MamlExperimentSettings, shots: int):
    """Yield ``(steps, model)`` for every step count of ``settings.steps``: a copy of ``backbone`` after that many
    SGD steps on the k-shot support of the target's training identities (the start is never changed; the same
    model object, its conv weights in the channels-last layout (:func:`fast_layout`), is updated in place between
    yields)."""
    device = next(backbone.parameters()).device
    margin = CosFaceMargin()
    support = few_shot_support(data.labels, data.collections, settings.target, shots, seed=settings.seed)
    identities = sorted(support)
    indices = [index for identity in identities for index in support[identity]]
    labels = torch.as_tensor([way for way, identity in enumerate(identities) for _ in support[identity]])
    images = data.images(indices).to(device)
    work = fast_layout(copy.deepcopy(backbone))
    params = {name: p.detach().clone().requires_grad_() for name, p in adapter_parameters(work).items()}
    done = 0
    for target_steps in tqdm(settings.steps, desc=f"{settings.method} k={shots}", disable=not settings.progress):
        if target_steps > done:
            params = inner_adapt(work, params, images, labels.to(device), len(identities), margin,
                                 steps=target_steps - done, lr=settings.inner_lr, first_order=True)
            params = {name: p.detach().requires_grad_() for name, p in params.items()}
            done = target_steps
        load_parameters(work, params)
        yield target_steps, work.eval()


def _score(model: nn.Module, name: str, pack) -> dict[str, Any]:
    return evaluate_on_packs(model, {name: pack}, device=next(model.parameters()).device)[name]


def adaptation_curves(backbone: nn.Module, data: MamlData, settings: MamlExperimentSettings,
                      ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{k: {steps: target test metrics}}``: SGD on the k-shot support of the target's training identities,
    scored on its test identities after every step count in ``settings.steps`` (the start is never changed)."""
    start = StartScore()
    return {str(shots): {str(steps): start.at(steps, lambda: _score(model, settings.target, data.target_pack))
                         for steps, model in _adapted(backbone, data, settings, shots)}
            for shots in settings.shots}


@dataclass
class ChosenAdaptation:
    """The adaptation with its step count chosen on validation: ``curves`` ``{k: {steps: validation metrics}}``,
    ``chosen_steps`` ``{k: steps}`` and ``test`` ``{k: test metrics at the chosen steps}``."""

    curves: dict[str, dict[str, dict[str, Any]]]
    chosen_steps: dict[str, int]
    test: dict[str, dict[str, Any]]


def validation_chosen_adaptation(backbone: nn.Module, data: MamlData, settings: MamlExperimentSettings,
                                 ) -> ChosenAdaptation:
    """Per k: the target's validation pack scored after every step count of ``settings.steps``, the step count with
    the highest validation AUC chosen (of equals, the fewest steps), and the test pack scored **once**, with the
    adapter tensors of that step count (kept aside while the curve goes on)."""
    if data.target_val_pack is None:
        raise ValueError("validation_chosen_adaptation: the data hold no validation pack of the target "
                         "(load_data with choose_steps_on_validation)")
    curves, chosen, test = {}, {}, {}
    start = StartScore()
    for shots in settings.shots:
        curve, best, best_state, model = {}, None, None, None
        for steps, model in _adapted(backbone, data, settings, shots):
            metrics = start.at(steps, lambda: _score(model, settings.target, data.target_val_pack))
            curve[str(steps)] = metrics
            if best is None or metrics["auc"] > curve[str(best)]["auc"]:
                best = steps
                best_state = {name: p.detach().clone() for name, p in adapter_parameters(model).items()}
        load_parameters(model, best_state)
        curves[str(shots)], chosen[str(shots)] = curve, best
        test[str(shots)] = _score(model.eval(), settings.target, data.target_pack)
    return ChosenAdaptation(curves, chosen, test)


def record_path(settings: MamlExperimentSettings) -> Path:
    return results_root() / settings.experiment / f"{settings.tag}.json"


def run_method(settings: MamlExperimentSettings, data: MamlData) -> dict[str, Any]:
    """Meta-train (or not), adapt to the target for every k, record; a recorded run is reused unless overwrite.

    Under torchrun (several processes) the ranks meta-train together, each on its share of every outer step's
    episodes (:func:`afr.meta.meta_train`); rank 0 alone decides (reuse or train), saves, runs the adaptation
    curves (small: one process) and writes; the others get its record (:func:`afr.train.distributed.on_main`)."""
    path = record_path(settings)
    if distributed.on_main(lambda: path.is_file() and not settings.overwrite):
        return distributed.on_main(lambda: reuse_record(
            path, settings.experiment, lambda record: curve_rows(record, settings), grid=settings.grid))
    started = time.time()
    backbone, meta = initialisation(settings, data)
    trainable, total = trainable_parameters(backbone)

    def finish() -> dict[str, Any]:
        if settings.choose_steps_on_validation:
            adaptation = validation_chosen_adaptation(backbone, data, settings)
            scored = {"curves": adaptation.curves, "curves_split": "val", "chosen_steps": adaptation.chosen_steps,
                      "test": adaptation.test}
        else:
            scored = {"curves": adaptation_curves(backbone, data, settings)}
        record = {"experiment": settings.experiment, "tag": settings.tag, "method": settings.method,
                  "seed": settings.seed, "settings": settings.recorded_settings(),  # + world_size under torchrun
                  "meta_training": {**meta, "adapter_parameters": trainable, "backbone_parameters": total - trainable},
                  **scored, "environment": environment_info(evaluation_device(settings)),
                  "wall_seconds": round(time.time() - started, 1)}
        write_record(path, record, settings.experiment, curve_rows(record, settings), overwrite=settings.overwrite,
                     grid=settings.grid)
        return record

    return distributed.on_main(finish)


def curve_rows(record: Mapping[str, Any], settings: MamlExperimentSettings) -> list[dict[str, Any]]:
    """Tidy rows of a record's curves (``shots``, ``steps`` columns; ``split`` ``test``, or ``val`` where the step
    count was chosen on validation: then one ``test`` row set per k, at its chosen ``steps``); ``random`` at step 0
    is also ``zero-shot``."""
    rows = []

    def add(split: str, shots: str, steps: int, metrics: Mapping[str, Any]) -> None:
        nonlocal rows
        extra = {"split": split, **settings.table_columns(), "shots": int(shots), "steps": int(steps)}
        rows += metric_rows(settings.experiment, record["tag"], record["method"], record["seed"],
                            {settings.target: metrics}, extra)
        if record["method"] == "random" and int(steps) == 0:
            rows += metric_rows(settings.experiment, record["tag"], "zero-shot", record["seed"],
                                {settings.target: metrics}, extra)

    for shots, curve in record["curves"].items():
        for steps, metrics in curve.items():
            add(record.get("curves_split", "test"), shots, int(steps), metrics)
    for shots, metrics in (record.get("test") or {}).items():
        add("test", shots, record["chosen_steps"][shots], metrics)
    return rows


def run_grid(settings: MamlExperimentSettings, data: MamlData, report: Callable[[str], None] | None = print,
             ) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (method, seed) run. Before any work: the results, tables and runs folders must accept files
    (:func:`~afr.experiments.records.check_outputs_writable`), and interrupted meta-trainings of the grid are refused
    unless ``resume`` or ``overwrite`` (:func:`~afr.experiments.records.check_unfinished_runs`). Runs recorded
    already are reused, and one line through ``report`` says so and names ``overwrite``."""
    settings.check_world_size()  # a torchrun job of several processes: tasks_per_step splits over them
    check_outputs_writable(settings.experiment, settings.runs_folder)
    runs = {(method, seed): settings.for_run(method, seed) for seed in settings.seeds for method in settings.methods}
    # under torchrun rank 0 checks, decides and reports (distributed.on_main); the ranks meta-train each run together
    distributed.on_main(lambda: check_unfinished_runs([(record_path(run), run.run_dir) for run in runs.values()],
                                                      settings.resume, settings.overwrite))
    reused = [] if settings.overwrite else distributed.on_main(
        lambda: [key for key, run in runs.items() if record_path(run).is_file()])
    records = GridRuns({key: run_method(run, data) for key, run in runs.items()}, reused)
    if reused and report is not None and distributed.job_rank() == 0:
        report(reuse_note([record_path(runs[key]) for key in reused], [seed for _, seed in reused]))
    return records


def curve_table(records: Mapping[tuple[str, int], Mapping[str, Any]]):
    """Long table (method, seed, shots, steps, metric, value) of the grid's target curves; flagged starts
    (:mod:`afr.experiments.health`: diverged meta-training, collapsed curves) are left out, a line each printed."""
    import pandas as pd

    from afr.experiments.health import healthy_records

    records, _ = healthy_records(records)
    rows = []
    for (method, seed), record in records.items():
        for shots, curve in record["curves"].items():
            for steps, metrics in curve.items():
                for metric, value in grid_metric_values(metrics):
                    rows.append({"method": method, "seed": seed, "shots": int(shots), "steps": int(steps),
                                 "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["method", "seed", "shots", "steps", "metric", "value"])


def chosen_table(records: Mapping[tuple[str, int], Mapping[str, Any]]):
    """Long table (method, seed, shots, steps, metric, value) of the test pack scored once per k, at the step count
    chosen on the target's validation identities (records of a grid with ``choose_steps_on_validation``); flagged
    starts left out as in :func:`curve_table`."""
    import pandas as pd

    from afr.experiments.health import healthy_records

    records, _ = healthy_records(records)
    rows = [{"method": method, "seed": seed, "shots": int(shots), "steps": int(record["chosen_steps"][shots]),
             "metric": metric, "value": value}
            for (method, seed), record in records.items() for shots, metrics in (record.get("test") or {}).items()
            for metric, value in grid_metric_values(metrics)]
    return pd.DataFrame(rows, columns=["method", "seed", "shots", "steps", "metric", "value"])


def run_experiment(settings: MamlExperimentSettings) -> dict[str, Any]:
    """The whole of notebook 04 without its pictures; a JSON-ready summary (mean over seeds per point)."""
    data = load_data(settings)
    records = run_grid(settings, data)
    table = curve_table(records)
    summary = table.groupby(["method", "shots", "steps", "metric"])["value"].agg(["mean", "std", "count"])
    return {"experiment": settings.experiment, "target": settings.target,
            "runs": {f"{method}/seed{seed}": record["tag"] for (method, seed), record in records.items()},
            "summary": summary.reset_index().to_dict(orient="records")}


def support_summary(data: MamlData, settings: MamlExperimentSettings) -> str:
    """Which collections meta-train, how many training identities and images each has, and the held-out target."""
    lines = []
    for collection in (*source_collections(settings, data), settings.target):
        chosen = data.collections == collection
        role = "target (held out)" if collection == settings.target else "source"
        lines.append(f"{collection:<12} {role:<18} {len(set(data.labels[chosen].tolist())):>3} identities "
                     f"{int(chosen.sum()):>4} training images")
    for shots in settings.shots:
        support = few_shot_support(data.labels, data.collections, settings.target, shots, seed=settings.seed)
        lines.append(f"k = {shots}: {len(support)} target identities x {shots} = "
                     f"{sum(len(v) for v in support.values())} labelled target images")
    pack = data.target_pack
    lines.append(f"target test pack: {len(pack.issame)} pairs ({int(np.sum(pack.issame))} same identity) of the "
                 f"target's test identities")
    return "\n".join(lines)


def paired_tests(table, against: str = "maml", metric: str = "auc", by: tuple[str, ...] = ("shots", "steps")):
    """Paired t-test over seeds (scipy) of ``against`` vs every other method, per ``by`` group (default: shots and
    steps; ``("shots",)`` for :func:`chosen_table`, whose step counts differ by run) (:func:`afr.stats.paired_tests`)."""
    from afr.stats import paired_tests as paired

    return paired(table, against, metric, by=by)


def _as_test_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A curves record in the shape :func:`~afr.experiments.reference.compare_with_reference` reads."""
    test = {f"k{shots}/step{steps}": metrics for shots, curve in record["curves"].items()
            for steps, metrics in curve.items()}
    return {"method": record["method"], "test": test}


def compare_curves_with_committed(records: Mapping[Any, Mapping[str, Any]]) -> str:
    """Every point of every curve against the committed record of the same tag, within the reference tolerances."""
    from afr.experiments.reference import _limits, committed_result, compare_with_reference

    compared = missing = 0
    for record in records.values():
        reference = committed_result(record["tag"], record["experiment"])
        if reference is None:
            missing += 1
            continue
        compare_with_reference(_as_test_record(record), _as_test_record(reference))
        compared += 1
    if not compared:
        return "no committed runs with these settings: nothing to compare with"
    return (f"{compared} run(s) agree with their committed records at every point of every curve ({_limits()})"
            + (f"; {missing} without a committed record" if missing else ""))
