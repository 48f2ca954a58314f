"""Notebook 03's settings (``python -m afr dalora``), its methods and learning-rate families. No torch."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from afr.experiments.settings.base import ExperimentSettings, MethodSeedGrid, SettingsError, setting
from afr.experiments.settings.fields import (FITTED_RECIPE_UNRECORDED, BackboneFields, DaLoraFields,
                                             FittedTrainingFields, FullProfileFields, GridFields, RunFields)

__all__ = ["DEFAULT_METHODS", "DISTILL_DOMAINS", "DaLoraExperimentSettings", "DaLoraRunSettings", "FAMILY_REPRESENTATIVE", "METHODS",
           "family"]

METHODS = ("lora", "lora-matched", "lora-distill", "dalora-classifier", "dalora-oracle", "dalora-uniform")
#: the rows a run of notebook 03 trains by default (the demo): every method but lora-distill, which the committed grid
#: adds (Makefile DALORA_RESULTS), so that the demo's budget does not grow
DEFAULT_METHODS = tuple(method for method in METHODS if method != "lora-distill")
#: the domains whose images lora-distill keeps close to the frozen backbone's embeddings (visible light)
DISTILL_DOMAINS = ("controlled", "wild")
#: the run whose validation result picks the learning rate of each adapter family
FAMILY_REPRESENTATIVE = {"lora": "lora", "dalora": "dalora-classifier"}


def family(method: str) -> str:
    return "dalora" if method.startswith("dalora") else "lora"


@dataclass
class DaLoraExperimentSettings(MethodSeedGrid, ExperimentSettings, RunFields, FittedTrainingFields, DaLoraFields,
                               GridFields, FullProfileFields, BackboneFields):
    """Notebook 03 / ``python -m afr dalora``: every field is a notebook parameter and a CLI option.

    Fields: :class:`BackboneFields`, :class:`FullProfileFields`, :class:`GridFields`, :class:`DaLoraFields`,
    :class:`FittedTrainingFields` (the fitted recipe by default), :class:`RunFields`, then its own (the grid's
    methods, the learning-rate search, the shared expert, the full profile's validation identities and domain
    labels).

    The full profile trains on a seeded CASIA-WebFace identity subset whose images carry the domains of
    ``python -m afr label-domains`` (``domain_labels``: one expert per domain), validates on ``val_identities``
    held-out identities and scores the five InsightFace packs. Its packs have no domain, so oracle gating
    (``dalora-oracle``) cannot run there."""

    experiment: ClassVar[str] = "dalora"
    DATA_PARALLEL: ClassVar[bool] = True  # torchrun: rank 0 decides and writes, batch_size is the global batch
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        *ExperimentSettings.EXECUTION_FIELDS, "methods", "seeds", "search_lrs", "publish_adapters")
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "backbone", "rank", "epochs", "batch_size", "lr", "router_lr", "lambda_contrastive", "lambda_domain",
        "score_test")
    #: the full profile's settings and router_view, added after the embedded grid was recorded: in the digest and
    #: the table's columns only when they differ from their defaults, so the embedded runs keep their tags and rows
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = (
        "data_profile", "train_rec", "num_identities", "bins_dir", "benchmarks", "val_identities", "domain_labels",
        "precision", "router_view", "centre_embeddings", "randaugment_ops", "lambda_distill")
    ADDED_TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ("data_profile", "num_identities", "router_view",
                                                       "centre_embeddings", "randaugment_ops")
    UNRECORDED_VALUES: ClassVar[dict[str, Any]] = FITTED_RECIPE_UNRECORDED

    rank: int = setting(8, "rank r of LoRA and of each DA-LoRA expert (lora-matched: K·r)")
    epochs: int = setting(2, "training epochs (2: the demo budget; make results trains 4)")

    methods: tuple[str, ...] = setting(DEFAULT_METHODS, "rows to train (subset of " + ", ".join(METHODS) + "; the "
                                       "committed grid adds lora-distill)")
    method: str = setting("lora", "method of a single run (the grid sets it per run)", choices=METHODS)
    search_lrs: tuple[float, ...] = setting((), "LoRA learning rates tried on the validation packs, the same for "
                                            "LoRA and DA-LoRA (empty: use lr)")
    shared_expert: bool = setting(False, "DA-LoRA: add an always-on shared expert")
    lambda_distill: float = setting(1.0, "lora-distill: weight of the squared distance between the adapted and the "
                                    "frozen backbone's unit embeddings of the visible training images (fixed in advance)")
    val_identities: int = setting(100, "full profile: CASIA-WebFace identities held out of training (never trained "
                                  "on) whose pairs are the validation pack")
    domain_labels: str | None = setting(None, "full profile: the folder of `python -m afr label-domains` (default: "
                                        "<train_rec>/domain_labels): the domain of every training image")
    publish_adapters: bool = setting(False, "copy each run's adapter to results/adapters/<grid>/<method>_seed<k>/ "
                                     "(results/adapters/ without a grid; an adapter another run published there is "
                                     "replaced only with overwrite)")

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges (afr.experiments.settings.FIELD_RULES), resume vs overwrite, batch shape
        self.methods = tuple(self.methods)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.search_lrs = tuple(float(lr) for lr in self.search_lrs)
        unknown = [method for method in (*self.methods, self.method) if method not in METHODS]
        if unknown:
            raise SettingsError(f"--methods: unknown method(s) {unknown}; choose from {METHODS}", "methods")
        if self.data_profile == "full" and "dalora-oracle" in (*self.methods, self.method):
            raise SettingsError(
                "--methods: dalora-oracle routes each test image to its domain's expert, and the full profile's "
                "InsightFace packs carry no domain; choose from "
                + " ".join(method for method in METHODS if method != "dalora-oracle"), "methods", "data_profile")
        self.benchmarks = tuple(self.benchmarks or ())

    def run_settings(self) -> DaLoraRunSettings:
        """The settings :func:`afr.experiments.dalora_run.run_method` trains this (method, seed) run with."""
        return DaLoraRunSettings.of(self, shared_expert=self.shared_expert)


@dataclass(frozen=True)
class DaLoraRunSettings:
    """The settings of one DA-LoRA or LoRA training run (:func:`afr.experiments.dalora_run.run_method`): what it
    trains and how (a subset of :class:`BackboneFields`, :class:`DaLoraFields`, :class:`TrainingFields` and
    :class:`RunFields`), and how it is named and recorded.

    Built explicitly from an experiment's settings by :meth:`of`: notebook 03's
    (:meth:`DaLoraExperimentSettings.run_settings`) and the ablations'
    (:meth:`~afr.experiments.settings.ablations.AblationSettings.run_settings`). The naming fields (``experiment``,
    ``tag``, ``run_dir``, table ``columns``) and the settings written to the run's record (``recorded``) are the
    experiment's own, computed by the experiment's settings: a run keeps the tag, record and rows it had when the
    experiment's settings were handed to the run itself. ``shared_expert`` is read only when ``run_method`` is given
    no DA-LoRA adapter settings for a DA-LoRA method (the ablations always give them)."""

    # naming and bookkeeping: the record's path and tag, the run folder, the table's columns, the record's settings
    experiment: str
    tag: str
    run_dir: Path
    method: str
    seed: int
    grid: str | None
    columns: Mapping[str, Any]
    recorded: Mapping[str, Any]
    # BackboneFields
    backbone: str
    weights: str | None
    embedded_root: str | None
    rank: int
    # DaLoraFields
    router_hidden: int
    router_lr: float
    router_view: str
    lambda_contrastive: float
    lambda_domain: float
    temperature: float
    images_per_identity: int
    # TrainingFields
    margin: str
    head_init: str
    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float
    warmup_epochs: float
    augment: bool
    score_test: bool
    num_workers: int
    # RunFields
    device: str
    resume: bool
    overwrite: bool
    progress: bool
    # notebook 03's own
    shared_expert: bool = False
    # TrainingFields, added after the grids were recorded (at auto / off)
    precision: str = "auto"
    centre_embeddings: bool = False
    randaugment_ops: int = 4
    # notebook 03's own, read by lora-distill only (the ablations have no such row)
    lambda_distill: float = 1.0

    #: the fields taken, by name, from the experiment's settings (the rest: naming, :meth:`of`)
    COPIED: ClassVar[tuple[str, ...]] = (
        "method", "seed", "grid", "backbone", "weights", "embedded_root", "rank", "router_hidden", "router_lr",
        "router_view", "lambda_contrastive", "lambda_domain", "temperature", "images_per_identity", "margin", "head_init", "epochs",
        "batch_size", "lr", "head_lr", "weight_decay", "warmup_epochs", "augment", "score_test", "num_workers",
        "device", "resume", "overwrite", "progress", "precision", "centre_embeddings",
        "randaugment_ops")
    #: notebook 03's own fields, taken where the experiment's settings have them (the ablations' do not: the run
    #: keeps its default above)
    COPIED_IF_PRESENT: ClassVar[tuple[str, ...]] = ("lambda_distill",)

    @classmethod
    def of(cls, settings: ExperimentSettings, shared_expert: bool = False) -> DaLoraRunSettings:
        """The run of ``settings`` (one (method, seed) run of notebook 03 or one ablation run): the fields
        :data:`COPIED`, the experiment's naming (its tag, run folder, table columns) and its settings as recorded."""
        return cls(experiment=settings.experiment, tag=settings.tag, run_dir=settings.run_dir,
                   columns=settings.table_columns(), recorded=dataclasses.asdict(settings),
                   shared_expert=shared_expert, **{name: getattr(settings, name) for name in cls.COPIED},
                   **{name: getattr(settings, name) for name in cls.COPIED_IF_PRESENT if hasattr(settings, name)})

    def table_columns(self) -> dict[str, Any]:
        """The experiment's settings columns of this run's tidy rows."""
        return dict(self.columns)
