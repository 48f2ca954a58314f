"""Notebook 05's settings (``python -m afr crossdomain``): its methods, starts, directions and the settings each kind
of run depends on; and :func:`forgetting_table`, which reads only these (the paper uses it). No torch
(:meth:`CrossDomainSettings.meta_config` and ``dalora_settings`` import what they build when called)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from afr.data.benchmarks import FULL_BENCHMARKS
from afr.experiments.settings.base import ExperimentSettings, MethodSeedGrid, SettingsError, digest_of, setting, sha8
from afr.experiments.settings.fields import (DATA_PROFILES, BackboneFields, FullProfileFields, GridFields,
                                             MetaStartFields, RecordedStartFields, RunFields)

__all__ = ["ALL_SHOTS", "DATA_PROFILES", "DIRECTIONS", "Direction", "EXPERTS", "EXTRA_TERMS", "FULL_PROFILE_FIELDS",
           "MAML_START_FIELDS", "METHODS", "START_FIELDS", "START_OF", "STARTS", "THERMAL_COLLECTIONS",
           "THERMAL_PACKS", "VALIDATION_STEP_COUNTS", "VISIBLE_COLLECTIONS", "VISIBLE_PACKS", "ZERO_SHOT_FIELDS",
           "CrossDomainSettings", "chosen_steps_table", "forgetting_table", "shots_label", "shots_order",
           "validation_table"]

METHODS = ("zero-shot", "lora", "dalora", "dalora+maml", "dalora+maml+contrastive", "dalora+maml+contrastive+semi")
#: the stage-1 starts: start -> inner SGD steps from the settings? (always first order)
STARTS = {"pooled": False, "maml": True}
#: the start each adapted method begins from
START_OF = {"lora": "pooled", "dalora": "pooled", "dalora+maml": "maml", "dalora+maml+contrastive": "maml",
            "dalora+maml+contrastive+semi": "maml"}
#: the adaptation loss terms of each method besides CosFace: (supervised InfoNCE, unlabelled two-view InfoNCE)
EXTRA_TERMS = {"dalora+maml+contrastive": (True, False), "dalora+maml+contrastive+semi": (True, True)}
VISIBLE_COLLECTIONS = ("orl", "yale", "lowquality")
THERMAL_COLLECTIONS = ("thermal_und", "thermal_puj")
THERMAL_PACKS = ("thermal_und", "thermal_puj", "thermal")
VISIBLE_PACKS = ("controlled", "wild", "lowquality")
#: the step counts at which stage 2 is scored on the validation identities (``choose_steps_on_validation``), those
#: up to ``adapt_steps``; ``adapt_steps`` itself is always one of them
VALIDATION_STEP_COUNTS = (0, 1, 3, 5, 10, 25, 50, 100)
#: ``k`` meaning every labelled training image of each target identity (``shots: [all]`` in the settings)
ALL_SHOTS = -1


@dataclass(frozen=True)
class Direction:
    """A domain shift: stage 1 on the ``source`` collections, stage 2 on ``k`` labelled images per identity of
    the ``target`` collections (none: the target has no training identities, only the starts are compared),
    scored on the ``target_packs`` and, for forgetting, the ``source_packs``. DA-LoRA's two ``experts`` are named
    after the two sides; they are also the domain names set_domains / merge_dalora are given."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    target_packs: tuple[str, ...]
    source_packs: tuple[str, ...]
    experts: tuple[str, str]
    #: the embedded benchmark's validation pack of the target domain (``val/<name>.bin``; its identities are neither
    #: training nor test identities): stage 2's step count is chosen on it (``choose_steps_on_validation``)
    validation_pack: str | None = None


#: the shifts notebook 05 studies; the first is the default (its runs' tags do not name it)
DIRECTIONS = {
    "visible->thermal": Direction(VISIBLE_COLLECTIONS, THERMAL_COLLECTIONS, THERMAL_PACKS, VISIBLE_PACKS,
                                  ("visible", "thermal"), validation_pack="thermal"),
    # the low-quality chips are degraded copies of ORL/Yale identities' images: the same people, a new camera
    "visible->lowquality": Direction(("orl", "yale"), ("lowquality",), ("lowquality",), ("controlled", "wild"),
                                     ("visible", "lowquality"), validation_pack="lowquality"),
    # the wild photos have no training identities: a start trained on the controlled (indoor) collections only
    "indoor->outdoor": Direction(("orl", "yale"), (), ("wild",), ("controlled",), ("indoor", "outdoor")),
}
#: the DA-LoRA experts of the default direction
EXPERTS = DIRECTIONS["visible->thermal"].experts


def shots_label(shots: int) -> str:
    """``"all"`` for :data:`ALL_SHOTS`, the number otherwise (tables, records' ``k<label>`` keys, plots)."""
    return "all" if shots == ALL_SHOTS else str(shots)


def _parse_shots(value: Any) -> int:
    if str(value).strip().lower() == "all":
        return ALL_SHOTS
    shots = int(value)
    if shots < 1 and shots != ALL_SHOTS:  # ALL_SHOTS: already parsed (dataclasses.replace parses again)
        raise SettingsError(f"--shots (setting shots) must be at least 1 labelled image per identity or 'all', "
                            f"got {value!r}", "shots")
    return shots


#: the full profile's data settings (every kind of run depends on them: they choose the collections and the packs)
FULL_PROFILE_FIELDS = ("data_profile", "train_rec", "num_identities", "bins_dir", "benchmarks", "target_dir",
                       "target_test_identities", "target_bins")
#: settings each kind of run depends on (its tag's digest); adapted methods depend on every setting
ZERO_SHOT_FIELDS = ("backbone", "weights", "embedded_root", *FULL_PROFILE_FIELDS)
START_FIELDS = (*ZERO_SHOT_FIELDS, "rank", "n_way", "k_shot", "q_query", "meta_steps", "tasks_per_step", "meta_lr",
                "seed")
MAML_START_FIELDS = (*START_FIELDS, "inner_steps", "inner_lr")

@dataclass
class CrossDomainSettings(MethodSeedGrid, ExperimentSettings, RunFields, RecordedStartFields, MetaStartFields,
                          GridFields, FullProfileFields, BackboneFields):
    """Notebook 05 / ``python -m afr crossdomain``: every field is a notebook parameter and a CLI option.

    Fields: :class:`BackboneFields`, :class:`FullProfileFields`, :class:`GridFields`, :class:`MetaStartFields`
    (stage 1), :class:`RecordedStartFields`, :class:`RunFields`, then its own (the direction, the full profile's
    target, the grid's methods, the adaptation: stage 2)."""

    experiment: ClassVar[str] = "crossdomain"
    #: torchrun: each outer step's episodes are split over the processes, rank 0 decides, writes and adapts
    DATA_PARALLEL: ClassVar[bool] = True
    SPLITS_TASKS: ClassVar[bool] = True
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (*ExperimentSettings.EXECUTION_FIELDS, "methods", "seeds",
                                                   "rebuild_starts")
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "backbone", "rank", "meta_steps", "inner_steps", "adapt_steps", "adapt_lr", "contrastive_weight",
        "unlabelled_weight")
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("direction", *FULL_PROFILE_FIELDS, "adapt_batch", "meta_grad_clip",
                                               "choose_steps_on_validation")
    ADDED_TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ("data_profile", "num_identities", "choose_steps_on_validation")
    #: the runs recorded before stage 2's step count could be chosen on validation took a fixed one
    UNRECORDED_VALUES: ClassVar[dict[str, Any]] = {"choose_steps_on_validation": False}
    #: shots may be "all": checked when parsed (_parse_shots)
    RULES: ClassVar[dict[str, Any]] = {"shots": None}

    data_profile: str = setting("embedded", "embedded: the CPU benchmark's collections (notebook 01); full: stage 1 "
                                "on a CASIA-WebFace identity subset, stage 2 on a folder of target face crops",
                                choices=DATA_PROFILES)
    num_identities: int | None = setting(None, "full profile: seeded CASIA identity subset of stage 1 (drawn with "
                                         "seed 0 for every run); default all")
    benchmarks: tuple[str, ...] = setting((), "full profile: visible packs to score for forgetting (default: all "
                                          "five)")
    inner_steps: int = setting(3, "first-order inner SGD steps of the maml start")
    inner_lr: float = setting(1e-3, "inner SGD learning rate of the maml start")
    resume: bool = setting(False, "continue an unfinished stage-1 meta-training from its last checkpoint")

    direction: str = setting("visible->thermal", "domain shift: stage-1 source collections -> target collections",
                             choices=tuple(DIRECTIONS))
    target_dir: str | None = setting(None, "full profile: target (e.g. thermal) face crops, <dir>/<identity>/<image>; "
                                     "its identities are split (seed 0) into training and test identities")
    target_test_identities: int | None = setting(None, "full profile: target identities held out as the test pack's "
                                                 "(default: half)")
    target_bins: tuple[str, ...] = setting((), "full profile: further target-domain verification packs (.bin files)")
    methods: tuple[str, ...] = setting(METHODS, "rows to run (subset of " + ", ".join(METHODS) + ")")
    method: str = setting("dalora+maml", "method of a single run (the grid sets it per run)", choices=METHODS)
    shots: tuple[str, ...] = setting((1, 4), "k: labelled target images per target training identity (or all)")
    adapt_steps: int = setting(10, "SGD steps of stage 2, the adaptation to the target (with "
                               "choose_steps_on_validation: the most it may choose); 10: the demo budget, the committed "
                               "grids run 25")
    adapt_lr: float = setting(3e-4, "SGD learning rate of stage 2, the adaptation to the target (3e-4: chosen against "
                              "1e-3 on the thermal validation identities, results/analysis/crossdomain_lr/)")
    choose_steps_on_validation: bool | None = setting(
        None, "score stage 2 on the target's validation identities (embedded val/<target>.bin) after 0, 1, 3, 5, 10, "
        "25, 50, 100 steps up to adapt_steps and after adapt_steps, and score the test packs once, with the adapter of "
        "the step count with the highest validation AUC (per k; of equals the fewest steps); off: the test packs after "
        "adapt_steps (the first grids). Embedded profile with a stage 2 only (default: on there, off elsewhere)")
    adapt_batch: int | None = setting(None, "images per adaptation step, identity-balanced draws from the support "
                                      "(default: the whole support every step; the full profile needs a bound)")
    contrastive_weight: float = setting(0.1, "weight of the supervised InfoNCE over the support (contrastive rows)")
    unlabelled_weight: float = setting(0.1, "weight of the two-view InfoNCE over unlabelled thermal images (semi row)")
    temperature: float = setting(0.1, "temperature of both InfoNCE terms")
    unlabelled_batch: int = setting(32, "unlabelled thermal images per adaptation step (semi row)")

    def __post_init__(self) -> None:
        if self.choose_steps_on_validation is None:  # on wherever the target has validation identities
            shift = DIRECTIONS.get(self.direction)
            self.choose_steps_on_validation = self.data_profile == "embedded" and bool(shift and shift.target)
        super().__post_init__()  # ranges (afr.experiments.settings.FIELD_RULES), choices, resume vs overwrite
        self.methods = tuple(self.methods)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.shots = tuple(sorted((_parse_shots(k) for k in self.shots), key=lambda k: (k == ALL_SHOTS, k)))
        unknown = [method for method in (*self.methods, self.method) if method not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; choose from {tuple(DIRECTIONS)}")
        if self.data_profile not in DATA_PROFILES:
            raise ValueError(f"data_profile must be one of {DATA_PROFILES}, got {self.data_profile!r}")
        if self.data_profile == "full" and self.direction != "visible->thermal":
            raise ValueError(f"the full profile has one direction, CASIA-WebFace -> target_dir; got {self.direction!r}")
        self.benchmarks = tuple(self.benchmarks or ())
        self.target_bins = tuple(self.target_bins or ())
        stems = [Path(path).stem for path in self.target_bins]
        if len(set(stems)) < len(stems) or set(stems) & {"thermal", *FULL_BENCHMARKS}:
            raise ValueError(f"target_bins must have distinct file names other than thermal and the benchmarks': {stems}")
        if self.choose_steps_on_validation and self.data_profile == "full":
            raise SettingsError("--choose-steps-on-validation: the full profile's target folder is split into training "
                                "and test identities only, it has no validation identities to choose on",
                                "choose_steps_on_validation", "data_profile")
        if self.choose_steps_on_validation and not self.shift.target:
            raise SettingsError(f"--choose-steps-on-validation: {self.direction} has no stage 2 (no labelled target "
                                "images), so there is no step count to choose", "choose_steps_on_validation",
                                "direction")
        if not self.shots:
            raise SettingsError("--shots (setting shots) must name at least one k (a number of labelled images per "
                                "identity, or all)", "shots")

    @property
    def validation_step_counts(self) -> tuple[int, ...]:
        """The step counts at which stage 2 is scored on validation (``choose_steps_on_validation``; else none)."""
        if not self.choose_steps_on_validation:
            return ()
        return tuple(sorted({*(steps for steps in VALIDATION_STEP_COUNTS if steps <= self.adapt_steps),
                             self.adapt_steps}))

    def for_run(self, method: str, seed: int) -> CrossDomainSettings:
        """The settings of one run; zero-shot has no seed (it is always seed 0)."""
        return dataclasses.replace(self, method=method, seed=0 if method == "zero-shot" else seed)

    @property
    def shift(self) -> Direction:
        """The direction's collections and packs; the full profile's: CASIA-WebFace -> the target folder."""
        if self.data_profile == "full":
            return Direction(source=("casia",), target=("thermal",),
                             target_packs=(*(Path(path).stem for path in self.target_bins), "thermal"),
                             source_packs=self.benchmarks or FULL_BENCHMARKS, experts=("visible", "thermal"))
        return DIRECTIONS[self.direction]

    def _digest(self, kind: str, names: Sequence[str]) -> str:
        return digest_of(f"{self.experiment}/{kind}", self.digest_values(names))

    @property
    def tag(self) -> str:
        if self.method == "zero-shot":
            return f"{self.experiment}_zero-shot_{self._digest('zero-shot', ZERO_SHOT_FIELDS)}"
        return f"{self.experiment}_{self.method}_seed{self.seed}_{self.digest()}"

    def adapted_methods(self) -> tuple[str, ...]:
        """The grid's methods that adapt a start (none when the direction has no target training images)."""
        return tuple(method for method in self.methods if method in START_OF) if self.shift.target else ()

    def grid_starts(self) -> tuple[str, ...]:
        """The stage-1 starts the grid runs: those its adapted methods begin from; both when the direction has no
        target training images (the starts are then what is compared)."""
        if not self.shift.target:
            return tuple(STARTS)
        return tuple(dict.fromkeys(START_OF[method] for method in self.adapted_methods()))

    def start_fields(self, start: str) -> tuple[str, ...]:
        """What a start depends on: its stage-1 settings and, when not the default's, its source collections
        (``source`` is not a field: the directions with the same sources share their starts)."""
        return MAML_START_FIELDS if STARTS[start] else START_FIELDS

    def start_tag(self, start: str) -> str:
        """The tag of this seed's stage-1 run ``start``: it depends on the stage-1 settings only (and on the source
        collections where they are not the default direction's), and on the job's world size when it is not 1 (the
        start meta-trains data-parallel)."""
        values = self.digest_values(self.start_fields(start))
        if self.world_size != 1:  # meta-trained over several processes (one process's start tags are unchanged)
            values["world_size"] = self.world_size
        digest = digest_of(f"{self.experiment}/{start}", values)
        if self.shift.source != DIRECTIONS["visible->thermal"].source:
            digest = sha8(f"{digest}:{'+'.join(self.shift.source)}")
        return f"{self.experiment}_{start}-start_seed{self.seed}_{digest}"

    def start_dir(self, start: str) -> Path:
        return self.runs_folder / self.start_tag(start)

    def meta_config(self, start: str):
        """The stage-1 loop settings (:class:`afr.meta.MetaConfig`) of ``start`` (first order)."""
        from afr.meta import MetaConfig

        return MetaConfig(inner_steps=self.inner_steps if STARTS[start] else 0, inner_lr=self.inner_lr,
                          first_order=True, meta_lr=self.meta_lr, meta_steps=self.meta_steps,
                          tasks_per_step=self.tasks_per_step, seed=self.seed, max_grad_norm=self.meta_grad_clip,
                          stop_on_divergence=self.stop_on_divergence)

    def dalora_settings(self):
        """Two experts named by the experts' own names (the domain codes are those names, not the embedded
        benchmark's ``controlled/wild/thermal/lowquality`` codes), oracle gating, alpha = r as the LoRA start
        (:class:`afr.adapters.dalora.DaLoraSettings`)."""
        from afr.adapters.dalora import DaLoraSettings

        experts = self.shift.experts
        return DaLoraSettings(r=self.rank, alpha=float(self.rank), domains=experts, domain_codes=experts,
                              gating="oracle")

    def not_applicable(self, method: str, shots: int) -> str | None:
        """Why ``method`` has no row at ``shots`` labelled images per identity, or None when it has one."""
        if not self.shift.target:
            return (f"{self.direction} has no labelled target images (no training identity of the target domain); "
                    "only the starts are compared")
        if method in EXTRA_TERMS and shots == 1:
            return (f"{method} at k = {shots}: one labelled image per identity gives the supervised contrastive "
                    "term no positive pair; not applicable")
        if EXTRA_TERMS.get(method, (False, False))[1] and shots == ALL_SHOTS:
            return (f"{method} at k = all: every target training image is labelled, none is left for the "
                    "unlabelled term; not applicable")
        return None


# ------------------------------------------------------------------------------------------ tables the paper reads
def forgetting_table(table, settings: CrossDomainSettings | None = None):
    """Per (method, seed, shots, source pack): accuracy after adaptation minus the method's start's
    (``change_vs_start``; zero-shot is its own start) and minus zero-shot's (``change_vs_zero_shot``)."""
    source_packs = (settings or CrossDomainSettings()).shift.source_packs
    accuracy = table[(table["metric"] == "accuracy") & table["domain"].isin(source_packs)]
    before = accuracy[accuracy["shots"] == 0].set_index(["method", "seed", "domain"])["value"]
    after = accuracy[accuracy["method"].isin(METHODS)].drop(columns="metric").rename(columns={"value": "accuracy"})
    start_of = {method: f"{START_OF[method]}-start" for method in START_OF} | {"zero-shot": "zero-shot"}
    after = after.assign(start=after["method"].map(start_of))
    after = after.join(before.rename("start_accuracy"), on=["start", "seed", "domain"])
    if "zero-shot" in set(before.index.get_level_values("method")):
        after = after.join(before.xs("zero-shot").rename("zero_shot_accuracy"), on=["seed", "domain"])
    else:  # zero-shot left out (flagged by the training-health rules) or not run: no change against it
        after = after.assign(zero_shot_accuracy=float("nan"))
    return after.assign(change_vs_start=after["accuracy"] - after["start_accuracy"],
                        change_vs_zero_shot=after["accuracy"] - after["zero_shot_accuracy"],
                        ).drop(columns=["start", "start_accuracy", "zero_shot_accuracy"]).reset_index(drop=True)


def shots_order(shots: int) -> tuple[bool, int]:
    """Sort key of a k: the numbers, then k = all."""
    return shots == ALL_SHOTS, shots


def validation_table(records: Mapping[tuple[str, int], Mapping[str, Any]]):
    """Stage 2's validation curves of the runs whose step count was chosen on validation: one row per (method, seed,
    k, steps) with the validation AUC and whether that step count was chosen (flagged runs left out, as in
    :func:`afr.experiments.crossdomain.grid_table`); empty when no run chose."""
    import pandas as pd

    from afr.experiments.health import healthy_records

    healthy, _ = healthy_records(records, show=False)
    rows = [{"method": method, "seed": seed, "shots": _parse_shots(key[1:]), "steps": int(steps),
             "val_auc": metrics["auc"], "chosen": int(steps) == adaptation["chosen_steps"]}
            for (method, seed), record in healthy.items()
            for key, adaptation in record.get("adaptation", {}).items() if "validation" in adaptation
            for steps, metrics in adaptation["validation"].items()]
    return pd.DataFrame(rows, columns=["method", "seed", "shots", "steps", "val_auc", "chosen"]).astype(
        {"seed": int, "shots": int, "steps": int, "val_auc": float, "chosen": bool})


def chosen_steps_table(validation):
    """Per (method, k): the chosen step count of each seed and the mean validation AUC before adaptation (step 0) and
    at the chosen step count, from :func:`validation_table`."""
    import pandas as pd

    if not len(validation):
        return pd.DataFrame(columns=["method", "k", "chosen steps (per seed)", "val AUC at 0", "val AUC chosen"])
    order = list(METHODS)
    rows = []
    for (method, shots), part in sorted(validation.groupby(["method", "shots"]),
                                        key=lambda item: (order.index(item[0][0]), shots_order(item[0][1]))):
        chosen = part[part["chosen"]].sort_values("seed")
        rows.append({"method": method, "k": shots_label(shots),
                     "chosen steps (per seed)": " ".join(str(steps) for steps in chosen["steps"]),
                     "val AUC at 0": round(float(part.loc[part["steps"] == 0, "val_auc"].mean()), 4),
                     "val AUC chosen": round(float(chosen["val_auc"].mean()), 4)})
    return pd.DataFrame(rows)
