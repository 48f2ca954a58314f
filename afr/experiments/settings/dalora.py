"""Notebook 03's settings (``python -m afr dalora``), its methods and learning-rate families. No torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from afr.experiments.settings.base import ExperimentSettings, MethodSeedGrid, SettingsError, setting
from afr.experiments.settings.fields import BackboneFields, DaLoraFields, GridFields, RunFields, TrainingFields

__all__ = ["DaLoraExperimentSettings", "DaLoraRun", "FAMILY_REPRESENTATIVE", "METHODS", "family"]

METHODS = ("lora", "lora-matched", "dalora-classifier", "dalora-oracle", "dalora-uniform")
#: the run whose validation result picks the learning rate of each adapter family
FAMILY_REPRESENTATIVE = {"lora": "lora", "dalora": "dalora-classifier"}


def family(method: str) -> str:
    return "dalora" if method.startswith("dalora") else "lora"


@dataclass
class DaLoraExperimentSettings(MethodSeedGrid, ExperimentSettings, RunFields, TrainingFields, DaLoraFields,
                               GridFields, BackboneFields):
    """Notebook 03 / ``python -m afr dalora``: every field is a notebook parameter and a CLI option.

    Fields: :class:`BackboneFields`, :class:`GridFields`, :class:`DaLoraFields`, :class:`TrainingFields`,
    :class:`RunFields`, then its own (the grid's methods, the learning-rate search, the shared expert)."""

    experiment: ClassVar[str] = "dalora"
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        *ExperimentSettings.EXECUTION_FIELDS, "methods", "seeds", "search_lrs", "publish_adapters")
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "backbone", "rank", "epochs", "batch_size", "lr", "router_lr", "lambda_contrastive", "lambda_domain",
        "score_test")

    rank: int = setting(8, "rank r of LoRA and of each DA-LoRA expert (lora-matched: K·r)")
    epochs: int = setting(2, "training epochs (2: the demo budget; make results trains 4)")

    methods: tuple[str, ...] = setting(METHODS, "rows to train (subset of " + ", ".join(METHODS) + ")")
    method: str = setting("lora", "method of a single run (the grid sets it per run)", choices=METHODS)
    search_lrs: tuple[float, ...] = setting((), "LoRA learning rates tried on the validation packs, the same for "
                                            "LoRA and DA-LoRA (empty: use lr)")
    shared_expert: bool = setting(False, "DA-LoRA: add an always-on shared expert")
    publish_adapters: bool = setting(False, "copy each run's adapter to results/adapters/<method>_seed<k>/ (the "
                                     "committed grid; replaces the adapters published before)")

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges (afr.experiments.settings.FIELD_RULES), resume vs overwrite, batch shape
        self.methods = tuple(self.methods)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.search_lrs = tuple(float(lr) for lr in self.search_lrs)
        unknown = [method for method in (*self.methods, self.method) if method not in METHODS]
        if unknown:
            raise SettingsError(f"--methods: unknown method(s) {unknown}; choose from {METHODS}", "methods")


class DaLoraRun(Protocol):
    """What one DA-LoRA training run (:func:`afr.experiments.dalora_vs_lora.run_method`, ``load_data``) reads of its
    settings. :class:`DaLoraExperimentSettings` is one; the ablations' :class:`AblationSettings` is another: its runs
    are named, recorded and tabled as ablation runs (``results/ablations/<tag>.json``, its own tag and table
    columns), so it is handed to ``run_method`` itself rather than converted. ``shared_expert`` is read only when
    ``run_method`` is given no DA-LoRA adapter settings for a DA-LoRA method (the ablations always give them)."""

    experiment: ClassVar[str]
    # naming and bookkeeping: the record's path and tag, the run folder, the table's columns
    tag: str
    run_dir: Path
    method: str
    seed: int
    # BackboneFields
    backbone: str
    weights: str | None
    embedded_root: str | None
    rank: int
    # DaLoraFields
    router_hidden: int
    router_lr: float
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

    def table_columns(self) -> dict[str, Any]: ...
