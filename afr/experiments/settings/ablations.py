"""Notebook 06's settings (``python -m afr ablations``): the component rows, the sweeps, the expert schemes, the
naming of its runs and MAML starts, and the grid's cells (:func:`grid_cells`, :func:`grid_runs`), which read only
these (the paper and the analysis use them). No torch."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from afr.experiments.settings.base import ExperimentSettings, MethodSeedGrid, SettingsError, digest_of, setting
from afr.experiments.settings.dalora import DaLoraRunSettings
from afr.experiments.settings.fields import (FITTED_RECIPE_UNRECORDED, BackboneFields, DaLoraFields,
                                             FittedTrainingFields, FullProfileFields, GridFields, MetaStartFields,
                                             RecordedStartFields, RunFields)

__all__ = ["COMPONENTS", "EXPERT_SCHEMES", "FULL_EXPERT_SCHEMES", "GROUPS", "MAML_FIELDS", "NATIVE_SCHEMES",
           "ROUTER_FIELDS", "SINGLE_EXPERT", "START_DATA_FIELDS", "START_FIELDS", "SWEEPS", "AblationSettings", "Cell",
           "expert_schemes", "grid_cells", "grid_runs"]

#: component row -> (label in the paper's table, its settings' changes from the full model)
COMPONENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("standard LoRA", {"method": "lora", "maml_start": False, "lambda_contrastive": 0.0,
                               "lambda_domain": 0.0}),
    "lora+router": ("+ domain classifier only", {"experts": 1, "maml_start": False, "lambda_contrastive": 0.0}),
    "dalora": ("+ domain experts", {"maml_start": False, "lambda_contrastive": 0.0}),
    "dalora+maml": ("+ MAML initialisation", {"lambda_contrastive": 0.0}),
    "dalora+contrastive": ("+ contrastive loss", {"maml_start": False}),
    "full": ("full DA-LoRA", {}),
}
#: sweep group (= the swept setting) -> the settings field listing its values
SWEEPS = {"rank": "ranks", "experts": "expert_counts", "lambda_contrastive": "lambda_contrastive_values",
          "lambda_domain": "lambda_domain_values", "inner_steps": "inner_steps_values"}
#: the groups in the order the grid runs them (the cheaper sweeps first: K and the large ranks cost most)
GROUPS = ("component", "lambda_contrastive", "lambda_domain", "inner_steps", "experts", "rank")
#: K -> the expert of each training collection (K = 1: one expert, its router classifies the three domains)
EXPERT_SCHEMES: dict[int, dict[str, str]] = {
    1: {"orl": "controlled", "yale": "controlled", "lowquality": "lowquality", "thermal_und": "thermal",
        "thermal_puj": "thermal"},
    2: {"orl": "visible", "yale": "visible", "lowquality": "visible", "thermal_und": "thermal",
        "thermal_puj": "thermal"},
    3: {"orl": "controlled", "yale": "controlled", "lowquality": "lowquality", "thermal_und": "thermal",
        "thermal_puj": "thermal"},
    4: {"orl": "orl", "yale": "yale", "lowquality": "lowquality", "thermal_und": "thermal", "thermal_puj": "thermal"},
    5: {"orl": "orl", "yale": "yale", "lowquality": "lowquality", "thermal_und": "thermal_und",
        "thermal_puj": "thermal_puj"},
}
#: the full profile's K schemes: labelled domain of a CASIA-WebFace image (``python -m afr label-domains``,
#: :data:`afr.data.domain_labels.DOMAIN_NAMES`) -> its expert. K = 2 puts the two kinds of good images
#: (controlled, unconstrained) in one expert against low-quality; K = 1 and 3 use the labels as they are. The
#: embedded K = 4 and 5 split collections (ORL | Yale, the two thermal sets) that CASIA-WebFace does not have.
FULL_EXPERT_SCHEMES: dict[int, dict[str, str]] = {
    1: {"controlled": "controlled", "unconstrained": "unconstrained", "low-quality": "low-quality"},
    2: {"controlled": "good-quality", "unconstrained": "good-quality", "low-quality": "low-quality"},
    3: {"controlled": "controlled", "unconstrained": "unconstrained", "low-quality": "low-quality"},
}
#: the K whose experts are the training pack's own domain codes (no relabelling: the pack is used as it is)
NATIVE_SCHEMES = (1, 3)
#: the name of the single expert of K = 1
SINGLE_EXPERT = "all"
#: settings only a run with a MAML start depends on / only a DA-LoRA run depends on (left out of other tags)
MAML_FIELDS = ("inner_steps", "inner_lr", "meta_steps", "tasks_per_step", "meta_lr", "n_way", "k_shot", "q_query")
ROUTER_FIELDS = ("experts", "lambda_domain", "router_lr", "router_hidden", "router_view", "maml_start")
#: what a MAML start depends on (its tag's digest)
START_FIELDS = ("backbone", "weights", "embedded_root", "rank", *MAML_FIELDS, "seed")
#: the full profile's data a MAML start depends on too (its episodes are drawn from the CASIA-WebFace training
#: subset): in its digest and record only when they differ from their defaults, so the embedded starts keep theirs
START_DATA_FIELDS = ("data_profile", "train_rec", "num_identities", "val_identities", "domain_labels")


def expert_schemes(data_profile: str) -> dict[int, dict[str, str]]:
    """The K schemes of a data profile: training collection (embedded) or labelled domain (full) -> expert."""
    return FULL_EXPERT_SCHEMES if data_profile == "full" else EXPERT_SCHEMES


@dataclass
class AblationSettings(MethodSeedGrid, ExperimentSettings, RunFields, RecordedStartFields, FittedTrainingFields,
                       DaLoraFields, MetaStartFields, GridFields, FullProfileFields, BackboneFields):
    """Notebook 06 / ``python -m afr ablations``: every field is a notebook parameter and a CLI option.

    The single-run fields are the full model's; :func:`grid_cells` derives every cell's settings from them. Fields:
    :class:`BackboneFields`, :class:`FullProfileFields`, :class:`GridFields`, :class:`MetaStartFields` (the MAML
    start), :class:`DaLoraFields`, :class:`FittedTrainingFields` (the fitted recipe by default),
    :class:`RecordedStartFields`, :class:`RunFields`, then its own (what the grid runs, the sweeps' values, the
    adapter and its parts, the full profile's validation identities and domain labels). Each run is a DA-LoRA
    training run (:func:`afr.experiments.dalora_run.run_method`) handed the explicit
    :class:`~afr.experiments.settings.dalora.DaLoraRunSettings` of :meth:`run_settings`: named (tag from these
    settings), recorded and tabled as an ablation run.

    The full profile (notebook 03's data) trains every run on a seeded CASIA-WebFace identity subset whose images
    carry the domains of ``python -m afr label-domains`` (``domain_labels``), validates on ``val_identities``
    held-out identities and scores the five InsightFace packs; the MAML starts' episodes are drawn from the same
    subset, one task per labelled domain (notebook 04's tasks). Its K schemes are :data:`FULL_EXPERT_SCHEMES` (1, 2,
    3); K = 4 and 5 are refused there. No run of the ablation routes by oracle (the router's softmax gates every
    DA-LoRA run), so the packs' lack of a domain costs nothing.
    """

    experiment: ClassVar[str] = "ablations"
    DATA_PARALLEL: ClassVar[bool] = True  # torchrun: rank 0 decides, writes and meta-trains the starts
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        *ExperimentSettings.EXECUTION_FIELDS, "groups", "components", "seeds", *SWEEPS.values(), "rebuild_starts")
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "rank", "experts", "lambda_contrastive", "lambda_domain", "maml_start", "inner_steps", "meta_steps", "epochs",
        "lr")
    #: the full profile's settings and router_view, added after the embedded grid was recorded: in the digest and
    #: the table's columns only when they differ from their defaults, so the embedded runs keep their tags and rows
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = (
        "data_profile", "train_rec", "num_identities", "bins_dir", "benchmarks", "val_identities", "domain_labels",
        "precision", "router_view", "centre_embeddings", "randaugment_ops", "meta_grad_clip")
    ADDED_TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ("data_profile", "num_identities", "router_view",
                                                       "centre_embeddings", "randaugment_ops")
    UNRECORDED_VALUES: ClassVar[dict[str, Any]] = FITTED_RECIPE_UNRECORDED

    inner_steps: int = setting(3, "first-order inner SGD steps of the MAML start")
    inner_lr: float = setting(1e-3, "inner SGD learning rate of the MAML start")
    meta_steps: int = setting(5, "outer steps of the MAML start (5: the demo budget; the committed grid runs 20)")
    tasks_per_step: int = setting(1, "episodes per outer step of the MAML start")
    meta_lr: float = setting(1e-3, "AdamW learning rate of the MAML start's outer loop")
    epochs: int = setting(1, "training epochs of every run (1: the demo's budget; the committed grid trains 4, as 03)")

    groups: tuple[str, ...] = setting(GROUPS, "what to run: component (the component table) and the sweeps "
                                      + ", ".join(SWEEPS))
    components: tuple[str, ...] = setting(("lora", "lora+router", "dalora", "full"), "component rows to run (of "
                                          + ", ".join(COMPONENTS) + "; the committed grid: all six)")
    ranks: tuple[int, ...] = setting((8,), "rank sweep (the committed grid: 2 4 8 16 32)")
    expert_counts: tuple[int, ...] = setting((3,), "K sweep, each of " + ", ".join(map(str, EXPERT_SCHEMES))
                                             + " (the committed grid: 2 3 4 5)")
    lambda_contrastive_values: tuple[float, ...] = setting((0.1,), "λ1 sweep (the committed grid: 0.01 0.05 0.1 0.5)")
    lambda_domain_values: tuple[float, ...] = setting((0.01,), "λ2 sweep (the committed grid: 0.01 0.05 0.1 0.5)")
    inner_steps_values: tuple[int, ...] = setting((3,), "MAML inner-step sweep (the committed grid: 1 3 5 10)")
    method: str = setting("dalora-classifier", "adapter of a single run: lora or dalora-classifier (DA-LoRA, router "
                          "softmax gating)", choices=("lora", "dalora-classifier"))
    experts: int = setting(3, "K: 1 (one expert, router trained on the 3 domains), 2 visible|thermal, 3 the domains, "
                           "4 orl|yale|lowquality|thermal, 5 the collections; full profile: 1, 2 (controlled and "
                           "unconstrained | low-quality), 3 the labelled domains", choices=tuple(EXPERT_SCHEMES))
    maml_start: bool = setting(True, "warm-start every expert from a first-order MAML start on the training "
                               "collections")
    val_identities: int = setting(100, "full profile: CASIA-WebFace identities held out of training (never trained "
                                  "on) whose pairs are the validation pack")
    domain_labels: str | None = setting(None, "full profile: the folder of `python -m afr label-domains` (default: "
                                        "<train_rec>/domain_labels): the domain of every training image, the "
                                        "experts' and the MAML tasks'")

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges (afr.experiments.settings.FIELD_RULES), resume vs overwrite, batch shape
        self.groups = tuple(self.groups)
        self.components = tuple(self.components)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.ranks = tuple(int(rank) for rank in self.ranks)
        self.expert_counts = tuple(int(k) for k in self.expert_counts)
        self.lambda_contrastive_values = tuple(float(value) for value in self.lambda_contrastive_values)
        self.lambda_domain_values = tuple(float(value) for value in self.lambda_domain_values)
        self.inner_steps_values = tuple(int(steps) for steps in self.inner_steps_values)
        unknown = [group for group in self.groups if group not in GROUPS]
        if unknown:
            raise ValueError(f"unknown group(s) {unknown}; choose from {GROUPS}")
        unknown = [name for name in self.components if name not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; choose from {tuple(COMPONENTS)}")
        schemes = [k for k in (*self.expert_counts, self.experts) if k not in EXPERT_SCHEMES]
        if schemes:
            raise ValueError(f"no expert scheme for K = {schemes}; K is one of {tuple(EXPERT_SCHEMES)}")
        if self.method not in ("lora", "dalora-classifier"):
            raise ValueError(f"method must be lora or dalora-classifier, got {self.method!r}")
        if self.maml_start and self.method == "lora":
            raise ValueError("the MAML start warm-starts DA-LoRA experts: maml_start needs method dalora-classifier")
        self.benchmarks = tuple(self.benchmarks or ())
        if self.data_profile == "full":
            refused = sorted({k for k in (*self.expert_counts, self.experts) if k not in FULL_EXPERT_SCHEMES})
            if refused:
                raise SettingsError(
                    f"--expert-counts / --experts: K = {', '.join(map(str, refused))} split the embedded "
                    "benchmark's collections (ORL | Yale, the two thermal sets), which CASIA-WebFace does not have; "
                    "the full profile's K schemes are 1, 2 (controlled and unconstrained | low-quality) and 3 (the "
                    "labelled domains)", "expert_counts", "experts", "data_profile")

    # -------------------------------------------------------------------------------------- naming
    def irrelevant_fields(self) -> tuple[str, ...]:
        """Settings this run does not depend on: the MAML start's without one, the router's for LoRA. They are left
        out of the tag, so that runs computing the same thing share it whatever those fields hold."""
        fields = () if self.maml_start else MAML_FIELDS
        return fields + (ROUTER_FIELDS if self.method == "lora" else ())

    def digest(self) -> str:
        # every field but the execution fields, the full profile's at their defaults (ADDED_FIELDS) and the
        # irrelevant ones; world_size in a torchrun job of several processes (single-process tags unchanged)
        skipped = set(self.irrelevant_fields())
        return digest_of(self.experiment, {name: value for name, value in self.digest_values().items()
                                           if name not in skipped})

    @property
    def run_name(self) -> str:
        """Readable part of the tag, e.g. ``dalora-k3-r8+maml+contrastive``."""
        if self.method == "lora":
            return f"lora-r{self.rank}" + ("+contrastive" if self.lambda_contrastive > 0 else "")
        return (f"dalora-k{self.experts}-r{self.rank}" + ("+maml" if self.maml_start else "")
                + ("+contrastive" if self.lambda_contrastive > 0 else ""))

    @property
    def tag(self) -> str:
        return f"{self.experiment}_{self.run_name}_seed{self.seed}_{self.digest()}"

    def start_settings(self) -> dict[str, Any]:
        """What this run's MAML start depends on: :data:`START_FIELDS`, and the full profile's data
        (:data:`START_DATA_FIELDS`) where it differs from the defaults (the start's digest and record)."""
        added = self.digest_values(START_DATA_FIELDS)  # an added field at its default is left out
        return {**{name: getattr(self, name) for name in START_FIELDS}, **added}

    def start_digest(self) -> str:
        return digest_of(f"{self.experiment}/start", self.start_settings())

    @property
    def start_tag(self) -> str:
        """The MAML start this run's experts start from: it depends on :data:`START_FIELDS` only."""
        return f"{self.experiment}_maml-start-r{self.rank}-inner{self.inner_steps}_seed{self.seed}_{self.start_digest()}"

    @property
    def start_dir(self) -> Path:
        return self.runs_folder / self.start_tag

    def run_settings(self) -> DaLoraRunSettings:
        """The DA-LoRA training run of these settings (:func:`afr.experiments.dalora_run.run_method`): its training
        fields, and this run's ablation tag, run folder, table columns and recorded settings (no shared expert)."""
        return DaLoraRunSettings.of(self)

    def full_model(self, seed: int) -> AblationSettings:
        """The full model's settings for ``seed``: these settings' single-run fields."""
        return dataclasses.replace(self, seed=seed, method="dalora-classifier", maml_start=True)


# ------------------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class Cell:
    """One cell of the ablation: its group, its value (a component name or the swept setting's value), the
    method column of its rows, and the settings of its run (cells with equal settings share the run)."""

    group: str
    value: Any
    method: str
    settings: AblationSettings

    @property
    def label(self) -> str:
        return COMPONENTS[self.value][0] if self.group == "component" else f"{self.group} = {self.value}"


def grid_cells(settings: AblationSettings) -> list[Cell]:
    """Every cell of the grid, group by group (:data:`GROUPS` order), each group seed by seed: the component rows,
    then each sweep's values (the full model with the swept setting changed; its default value is the full model
    itself). Group-major order, so that a grid stopped early leaves whole groups with every seed."""
    cells = []
    for group in [group for group in GROUPS if group in settings.groups]:
        for seed in settings.seeds:
            full = settings.full_model(seed)
            if group == "component":
                cells += [Cell(group, name, name, dataclasses.replace(full, **changes))
                          for name, (_, changes) in COMPONENTS.items() if name in settings.components]
            else:
                cells += [Cell(group, value, "full", dataclasses.replace(full, **{group: value}))
                          for value in getattr(settings, SWEEPS[group])]
    return cells


def grid_runs(settings: AblationSettings) -> set[str]:
    """The run tags of the grid's cells: a table holds other runs too (the demo's shorter MAML starts), which must
    not be counted as further seeds of a committed cell."""
    return {cell.settings.tag for cell in grid_cells(settings)}
