"""Notebook 04's settings (``python -m afr maml``) and its methods. No torch (:meth:`meta_config` imports
:mod:`afr.meta` when called)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from afr.experiments.settings.base import ExperimentSettings, MethodSeedGrid, SettingsError, setting
from afr.experiments.settings.fields import BackboneFields, GridFields, MetaStartFields, RunFields

__all__ = ["META_VARIANTS", "METHODS", "MamlExperimentSettings"]

METHODS = ("maml", "fomaml", "pooled-lora", "random")
#: how each method meta-trains: (inner steps from the settings?, first order)
META_VARIANTS = {"maml": (True, False), "fomaml": (True, True), "pooled-lora": (False, True)}


@dataclass
class MamlExperimentSettings(MethodSeedGrid, ExperimentSettings, RunFields, MetaStartFields, GridFields,
                             BackboneFields):
    """Notebook 04 / ``python -m afr maml``: every field is a notebook parameter and a CLI option.

    Fields: :class:`BackboneFields`, :class:`GridFields`, :class:`MetaStartFields`, :class:`RunFields`, then its
    own (the grid's methods, the target and source collections, the adaptation's shots and steps)."""

    experiment: ClassVar[str] = "maml"
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        *ExperimentSettings.EXECUTION_FIELDS, "methods", "seeds", "checkpoint_every")
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "backbone", "rank", "target", "meta_steps", "inner_steps", "inner_lr", "meta_lr")

    rank: int = setting(8, "LoRA rank r")
    inner_lr: float = setting(1e-3, "SGD learning rate of the inner loop and of the adaptation to the target (1e-2 "
                              "collapses the dlib embeddings on the source tasks)")
    resume: bool = setting(False, "continue an unfinished meta-training from its last checkpoint")

    methods: tuple[str, ...] = setting(METHODS, "rows to run (subset of " + ", ".join(METHODS) + ")")
    method: str = setting("maml", "method of a single run (the grid sets it per run)", choices=METHODS)
    target: str = setting("thermal_und", "held-out target collection (a centre-cropped thermal collection)")
    sources: tuple[str, ...] = setting(("orl", "yale", "lowquality", "thermal_puj"),
                                       "meta-training collections (the tasks' domains)")
    shots: tuple[int, ...] = setting((1, 2, 4), "k: labelled target images per training identity")
    steps: tuple[int, ...] = setting((0, 1, 3, 5), "adaptation steps at which the target is scored (make results: "
                                     "0 1 3 5 10 25)")
    checkpoint_every: int = setting(5, "checkpoint the meta-training every this many outer steps (and at the end): "
                                    "a killed run continues from there with --resume (5 steps: well under a minute "
                                    "of CPU work lost)")

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges (afr.experiments.settings.FIELD_RULES), resume vs overwrite
        self.methods = tuple(self.methods)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.sources = tuple(self.sources)
        self.shots = tuple(int(k) for k in self.shots)
        self.steps = tuple(sorted(int(step) for step in self.steps))
        unknown = [method for method in (*self.methods, self.method) if method not in METHODS]
        if unknown:
            raise SettingsError(f"--methods: unknown method(s) {unknown}; choose from {METHODS}", "methods")
        if self.target in self.sources:
            raise SettingsError(f"the target collection {self.target!r} (--target) cannot also be a source (--sources)",
                                "target", "sources")

    def meta_config(self):
        """The outer/inner loop settings (:class:`afr.meta.MetaConfig`) of this run's method (``random`` has none)."""
        from afr.meta import MetaConfig

        uses_inner, first_order = META_VARIANTS[self.method]
        return MetaConfig(inner_steps=self.inner_steps if uses_inner else 0, inner_lr=self.inner_lr,
                          first_order=first_order, meta_lr=self.meta_lr, meta_steps=self.meta_steps,
                          tasks_per_step=self.tasks_per_step, checkpoint_every=self.checkpoint_every,
                          seed=self.seed)
