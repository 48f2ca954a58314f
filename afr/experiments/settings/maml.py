"""Notebook 04's settings (``python -m afr maml``) and its methods. No torch (:meth:`meta_config` imports
:mod:`afr.meta` when called)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from afr.experiments.settings.base import ExperimentSettings, MethodSeedGrid, SettingsError, setting
from afr.validation import Rule
from afr.experiments.settings.fields import BackboneFields, CasiaFields, GridFields, MetaStartFields, RunFields

__all__ = ["META_VARIANTS", "METHODS", "MamlExperimentSettings"]

METHODS = ("maml", "fomaml", "pooled-lora", "random")
#: the embedded profile's default target and source collections; the full profile's target collection
EMBEDDED_TARGET, EMBEDDED_SOURCES, FULL_TARGET = "thermal_und", ("orl", "yale", "lowquality", "thermal_puj"), "thermal"
#: how each method meta-trains: (inner steps from the settings?, first order)
META_VARIANTS = {"maml": (True, False), "fomaml": (True, True), "pooled-lora": (False, True)}


@dataclass
class MamlExperimentSettings(MethodSeedGrid, ExperimentSettings, RunFields, MetaStartFields, GridFields,
                             CasiaFields, BackboneFields):
    """Notebook 04 / ``python -m afr maml``: every field is a notebook parameter and a CLI option.

    Fields: :class:`BackboneFields`, :class:`CasiaFields`, :class:`GridFields`, :class:`MetaStartFields`,
    :class:`RunFields`, then its own (the grid's methods, the target and source collections, the adaptation's shots
    and steps, the full profile's target folder and domain labels).

    The full profile's tasks are CASIA-WebFace's domains (``python -m afr label-domains``: one collection per
    domain, over a seeded identity subset) and its target is a folder of face crops (``target_dir``, e.g. thermal;
    collection ``thermal``), split once into training identities (the k-shot supports) and test identities (the
    test pack). ``sources`` empty: every collection of the profile but the target; ``target`` None: the profile's
    (embedded ``thermal_und``, full ``thermal``)."""

    experiment: ClassVar[str] = "maml"
    #: torchrun: each outer step's episodes are split over the processes, rank 0 decides, writes and adapts
    DATA_PARALLEL: ClassVar[bool] = True
    SPLITS_TASKS: ClassVar[bool] = True
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        *ExperimentSettings.EXECUTION_FIELDS, "methods", "seeds", "checkpoint_every")
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "backbone", "rank", "target", "meta_steps", "inner_steps", "inner_lr", "meta_lr")
    #: the full profile's settings, added after the embedded grid was recorded: in the digest and the table's
    #: columns only when they differ from their defaults, so the embedded runs keep their tags and rows
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = (
        "data_profile", "train_rec", "num_identities", "target_dir",
        "target_test_identities", "domain_labels", "meta_grad_clip", "choose_steps_on_validation")
    ADDED_TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ("data_profile", "num_identities", "meta_grad_clip",
                                                       "choose_steps_on_validation")
    RULES: ClassVar[dict[str, Rule | None]] = {"sources": Rule(kind="name", many=True, empty=True)}  # empty: default

    rank: int = setting(8, "LoRA rank r")
    inner_lr: float = setting(1e-3, "SGD learning rate of the inner loop and of the adaptation to the target (1e-2 "
                              "collapses the dlib embeddings on the source tasks)")
    resume: bool = setting(False, "continue an unfinished meta-training from its last checkpoint")

    methods: tuple[str, ...] = setting(METHODS, "rows to run (subset of " + ", ".join(METHODS) + ")")
    method: str = setting("maml", "method of a single run (the grid sets it per run)", choices=METHODS)
    target: str | None = setting(None, "held-out target collection (default: embedded thermal_und, a centre-cropped "
                                 "thermal collection; full: thermal, the target_dir folder)")
    sources: tuple[str, ...] = setting((), "meta-training collections, the tasks' domains (default: every collection "
                                       "but the target; embedded: orl yale lowquality thermal_puj; full: CASIA-WebFace's "
                                       "labelled domains)")
    shots: tuple[int, ...] = setting((1, 2, 4), "k: labelled target images per training identity")
    steps: tuple[int, ...] = setting((0, 1, 3, 5), "adaptation steps at which the target is scored (make results: "
                                     "0 1 3 5 10 25)")
    choose_steps_on_validation: bool = setting(
        False, "score the adaptation on the target's validation identities at every step count of `steps` and the test "
        "pack once, at the step count with the highest validation AUC (per k; of equals the fewest steps); off: the "
        "test pack at every step count (the first grid). Embedded profile only (the full profile's target folder has "
        "no validation identities)")
    target_dir: str | None = setting(None, "full profile: target face crops, <dir>/<identity>/<image> (collection "
                                     "thermal)")
    target_test_identities: int | None = setting(None, "full profile: target identities held out as the test pack's "
                                                 "(default: half)")
    domain_labels: str | None = setting(None, "full profile: the folder of `python -m afr label-domains` (default: "
                                        "<train_rec>/domain_labels): the domain of every CASIA-WebFace image")
    checkpoint_every: int = setting(5, "checkpoint the meta-training every this many outer steps (and at the end): "
                                    "a killed run continues from there with --resume (5 steps: well under a minute "
                                    "of CPU work lost)")

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges (afr.experiments.settings.FIELD_RULES), resume vs overwrite
        self.methods = tuple(self.methods)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        if self.data_profile == "full" and not self.target_dir:
            raise SettingsError("--target-dir (setting target_dir): the full profile's target is a folder of face "
                                "crops, <dir>/<identity>/<image> (e.g. thermal)", "target_dir", "data_profile")
        if self.data_profile == "full" and self.target not in (None, FULL_TARGET):
            raise SettingsError(f"--target: the full profile's target is the target_dir folder, collection "
                                f"{FULL_TARGET!r}; got {self.target!r}", "target")
        if self.data_profile == "full" and self.choose_steps_on_validation:
            raise SettingsError("--choose-steps-on-validation: the full profile's target folder is split into training "
                                "and test identities only, it has no validation identities to choose on",
                                "choose_steps_on_validation", "data_profile")
        self.target = self.target or (FULL_TARGET if self.data_profile == "full" else EMBEDDED_TARGET)
        # the embedded default is resolved here (its runs were recorded with it); the full profile's default (every
        # labelled domain) is known once the labels are read
        self.sources = tuple(self.sources) or (EMBEDDED_SOURCES if self.data_profile == "embedded" else ())
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
                          seed=self.seed, max_grad_norm=self.meta_grad_clip,
                          stop_on_divergence=self.stop_on_divergence)
