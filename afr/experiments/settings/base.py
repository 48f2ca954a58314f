"""Experiment settings' base: :class:`ExperimentSettings` (checks, digest, tag), the rule table, the command line.

One dataclass per experiment is the single list of its parameters, composed of the field groups of
:mod:`afr.experiments.settings.fields` and its own fields (:mod:`afr.experiments.settings.baseline`, ``.dalora``,
``.maml``, ``.crossdomain``, ``.ablations``).

The command line builds its options from the dataclass (:func:`add_arguments`), the notebook's
papermill ``parameters`` cell mirrors its fields and defaults (a test checks they agree), and both
build the settings the same way (:meth:`ExperimentSettings.from_mapping`), so notebook and CLI give
the same run. This module is cheap to import (no torch).

A run is named by its :attr:`~ExperimentSettings.tag`: readable parts plus a digest of every setting
that can change the result, so runs that differ in anything (learning rate, epochs, ...) never share
a run folder or a result file.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from afr.notebook_parameters import check_notebook_parameters
from afr.validation import Rule, SettingsError, check_choices, flag_of

__all__ = ["FIELD_RULES", "ExperimentSettings", "MethodSeedGrid", "SettingsError", "add_arguments", "job_settings",
           "job_world_size", "setting", "settings_from_arguments"]


def setting(default: Any, help: str, choices: tuple | None = None) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with its command-line help (and allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices})


_POSITIVE = Rule(low=0, strict=True)
_NON_NEGATIVE = Rule(low=0)
_COUNT = Rule(kind="integer", low=1)
#: what each numeric (or list) setting accepts, by field name: the experiments share their names' meanings. Every
#: settings class checks its fields against these rules (and :attr:`ExperimentSettings.RULES`, its own) when it
#: is constructed, before any work; a float field without a rule must still be finite.
FIELD_RULES: dict[str, Rule] = {
    # learning rates, scales, temperatures: finite and > 0
    **dict.fromkeys(("lr", "head_lr", "router_lr", "inner_lr", "meta_lr", "adapt_lr", "s", "temperature"), _POSITIVE),
    "alpha": Rule(low=0, strict=True, optional=True),
    "meta_grad_clip": Rule(low=0, strict=True, optional=True),  # None: no clipping
    "m": Rule(low=0, optional=True),
    "lora_dropout": Rule(low=0, high=1),
    # weights and lengths where 0 means "off"
    **dict.fromkeys(("weight_decay", "warmup_epochs", "lambda_contrastive", "lambda_domain", "lambda_distill", "contrastive_weight",
                     "unlabelled_weight"), _NON_NEGATIVE),
    # counts of steps, epochs, images, identities, dimensions: at least 1
    **dict.fromkeys(("rank", "epochs", "batch_size", "router_hidden", "images_per_identity", "k_shot", "q_query",
                     "inner_steps", "meta_steps", "tasks_per_step", "adapt_steps", "experts", "checkpoint_every"),
                    _COUNT),
    "randaugment_ops": Rule(kind="integer", low=0, high=16),  # 0 .. the 15 of afr.data.augment.RANDAUGMENT_POLICY
    "n_way": Rule(kind="integer", low=2),  # an episode tells identities apart
    "val_identities": Rule(kind="integer", low=2),  # a pack of different-identity pairs
    "unlabelled_batch": Rule(kind="integer", low=2),  # two-view InfoNCE needs negatives
    "adapt_batch": Rule(kind="integer", low=2, optional=True),
    **dict.fromkeys(("num_identities", "target_test_identities"), Rule(kind="integer", low=1, optional=True)),
    **dict.fromkeys(("seed", "num_workers"), Rule(kind="integer", low=0)),
    # lists: non-empty unless empty means something ("none": use lr)
    "seeds": Rule(kind="integer", low=0, many=True),
    "search_lrs": Rule(low=0, strict=True, many=True, empty=True),
    "shots": Rule(kind="integer", low=1, many=True),
    "steps": Rule(kind="integer", low=0, many=True),
    **dict.fromkeys(("ranks", "inner_steps_values", "expert_counts"), Rule(kind="integer", low=1, many=True)),
    **dict.fromkeys(("lambda_contrastive_values", "lambda_domain_values"), Rule(low=0, many=True)),
    **dict.fromkeys(("methods", "sources", "groups"), Rule(kind="name", many=True)),
}


#: the inputs only the full profile reads (CASIA-WebFace, its validation split and domain labels, the packs'
#: folder, the target folder): set on the embedded profile, they are refused rather than ignored
FULL_PROFILE_ONLY = ("train_rec", "num_identities", "val_identities", "bins_dir", "domain_labels", "target_dir",
                     "target_test_identities", "target_bins")


@functools.cache
def _float_fields(settings_class: type) -> tuple[str, ...]:
    """Fields annotated ``float`` (or a tuple or optional of floats): they must hold finite numbers."""
    hints = typing.get_type_hints(settings_class)
    return tuple(spec.name for spec in dataclasses.fields(settings_class)
                 if _argument_type(hints[spec.name])[0] is float)


def job_world_size() -> int:
    """The processes of this job: ``WORLD_SIZE`` as torchrun sets it (1 when unset). Read from the environment, never
    a user option, so a run's settings cannot disagree with the job that runs them (torch-free, unlike
    :func:`afr.train.distributed.job_world_size`, which agrees with it)."""
    return max(1, int(os.environ.get("WORLD_SIZE") or 1))


def sha8(text: str) -> str:
    """The first 8 hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def digest_of(prefix: str, values: Mapping[str, Any]) -> str:
    """The one digest of run tags: :func:`sha8` of ``<prefix>:<values as sorted JSON>`` (``prefix``: the experiment,
    or ``<experiment>/<kind>`` for runs of another kind, e.g. a stage-1 start)."""
    return sha8(f"{prefix}:{json.dumps(values, sort_keys=True, default=str)}")


def _same_value(value: Any, default: Any) -> bool:
    """``value == default``, a list equal to a tuple (a record's JSON turns tuples into lists)."""
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return tuple(value) == tuple(default)
    return value == default


@dataclass
class ExperimentSettings:
    """Base of the experiments' settings: run bookkeeping shared by every experiment."""

    #: the experiment's name: prefix of run tags, name of its table ``results/tables/<experiment>.csv``
    experiment: ClassVar[str] = "experiment"
    #: fields that say how a run executes, not what it computes: left out of the tag's digest
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "device", "num_workers", "output_dir", "progress", "resume", "overwrite", "grid", "stop_on_divergence")
    #: settings written as columns of every tidy-table row (the ones runs of this experiment differ by)
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ()
    #: settings added after results were recorded: they enter the digest only when they differ from their default,
    #: so the tags of the runs recorded before them (which ran at the default) stay valid
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ()
    #: settings added after rows were recorded: table columns only when they differ from their defaults
    ADDED_TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ()
    #: an added field whose default changed after it was added -> the value the runs recorded before it existed had:
    #: that value (not the new default) is the one left out of digests and table columns, so their tags and rows stay
    UNRECORDED_VALUES: ClassVar[dict[str, Any]] = {}
    #: this class's own rules, over :data:`FIELD_RULES` (a None rule: the field is checked by the class itself)
    RULES: ClassVar[dict[str, Rule | None]] = {}
    #: whether the experiment's training runs data-parallel under ``torchrun --nproc_per_node N`` (rank 0 decides,
    #: writes and scores, ``batch_size`` is the global batch split over the processes); the others refuse a job of
    #: several processes before any work
    DATA_PARALLEL: ClassVar[bool] = False
    #: whether its meta-training splits each outer step's ``tasks_per_step`` episodes over the processes (which must
    #: then divide it); the ablations meta-train their starts on rank 0 alone
    SPLITS_TASKS: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Subclasses call this first in their own ``__post_init__``: every setting is checked on construction."""
        self.validate()

    def validate(self) -> None:
        """Refuse, with one :class:`~afr.validation.SettingsError` naming the setting and its ``--flag``, a value
        out of its rule's range (NaN, a negative count, an empty list, ...), a value not among the field's
        choices, and the combinations no run can satisfy. Runs before any work, so nothing is written."""
        rules = {**FIELD_RULES, **self.RULES}
        for spec in dataclasses.fields(self):
            name = spec.name
            value = getattr(self, name)
            if name in rules:
                if rules[name] is not None:
                    rules[name].check(name, value)
            elif name in _float_fields(type(self)):
                Rule(optional=True, many=isinstance(value, (tuple, list)), empty=True).check(name, value)
            if spec.metadata.get("choices") and value is not None:
                check_choices(name, value, spec.metadata["choices"])
        self._check_profile_fields()
        if getattr(self, "resume", False) and getattr(self, "overwrite", False):
            raise SettingsError("resume and overwrite exclude each other (--resume, --overwrite): continue the run, "
                                "or start it again", "resume", "overwrite")
        batch, per_identity = getattr(self, "batch_size", None), getattr(self, "images_per_identity", None)
        if batch is not None and per_identity is not None and batch % per_identity:
            raise SettingsError(
                f"{flag_of('batch_size')} (setting batch_size) must be a multiple of {flag_of('images_per_identity')} "
                f"(images_per_identity) {per_identity}: batches hold P identities x M images; got {batch}",
                "batch_size", "images_per_identity")

    def _check_profile_fields(self) -> None:
        """A setting the run's data profile does not read is refused (never ignored): a full-profile input
        (:data:`FULL_PROFILE_ONLY`) set away from its default on the embedded profile, or ``embedded_root`` on the
        full profile."""
        profile = getattr(self, "data_profile", "embedded")
        defaults = {spec.name: spec.default for spec in dataclasses.fields(self)}
        unused = FULL_PROFILE_ONLY if profile == "embedded" else ("embedded_root",)
        given = [name for name in unused if name in defaults and not _same_value(getattr(self, name), defaults[name])]
        if given:
            flags = ", ".join(f"{flag_of(name)} (setting {name})" for name in given)
            other = "full" if profile == "embedded" else "embedded"
            raise SettingsError(f"{flags}: the {profile} profile does not use {'it' if len(given) == 1 else 'them'} "
                                f"(--data-profile {profile}); set data_profile {other} or leave "
                                f"{'it' if len(given) == 1 else 'them'} out", *given)

    @property
    def world_size(self) -> int:
        """The processes of the job running these settings (``WORLD_SIZE``, 1 without torchrun): not a field, read
        from the environment; in the tag's digest and the record's settings when it is not 1."""
        return job_world_size()

    def check_world_size(self) -> None:
        """A job of several processes (torchrun): the experiment must train data-parallel (:attr:`DATA_PARALLEL`),
        and ``batch_size``, the global batch, must split evenly over the processes (into whole P x M identity
        batches where there are such). Checked by :meth:`from_mapping` (the command line's and the notebooks' way to
        build settings) and by the data-parallel recipes, before any work; not on construction, so that building
        the defaults (the parser's, the committed grids') works in any job."""
        world = self.world_size
        if world == 1:
            return
        if not self.DATA_PARALLEL:
            raise SettingsError(
                f"the {self.experiment} experiment does not train data-parallel: run it in one process, not under "
                f"torchrun with WORLD_SIZE={world}", "world_size")
        batch, per_identity = getattr(self, "batch_size", None), getattr(self, "images_per_identity", None)
        if batch is not None and batch % world:
            raise SettingsError(
                f"{flag_of('batch_size')} (setting batch_size) is the global batch, split over the {world} processes "
                f"of this torchrun job: it must be a multiple of {world}, got {batch}", "batch_size")
        if batch is not None and per_identity is not None and (batch // world) % per_identity:
            raise SettingsError(
                f"{flag_of('batch_size')} (setting batch_size) {batch} over {world} processes gives {batch // world} "
                f"images per process, not a multiple of {flag_of('images_per_identity')} {per_identity}: "
                f"each process's batch holds P identities x M images", "batch_size", "images_per_identity")
        tasks = getattr(self, "tasks_per_step", None)
        if self.SPLITS_TASKS and tasks is not None and tasks % world:
            raise SettingsError(
                f"{flag_of('tasks_per_step')} (setting tasks_per_step) is split over the {world} processes of this "
                f"torchrun job (each meta-trains on its share of every outer step's episodes): it must be a multiple "
                f"of {world}, got {tasks}", "tasks_per_step")

    def recorded_settings(self) -> dict[str, Any]:
        """The settings as a run's record holds them: every field, plus ``world_size`` and the per-process batch
        (``batch_size_per_process``) when the job has several processes (single-process records are unchanged)."""
        values = dataclasses.asdict(self)
        values.update(job_settings(getattr(self, "batch_size", None)))
        return values

    @classmethod
    def unrecorded_values(cls) -> dict[str, Any]:
        """Every field's value in runs recorded before it was added: :attr:`UNRECORDED_VALUES`, else its default."""
        return {spec.name: cls.UNRECORDED_VALUES.get(spec.name, spec.default) for spec in dataclasses.fields(cls)}

    def digest_values(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The settings a digest covers: ``names`` (default: all but :attr:`EXECUTION_FIELDS`, plus the job's
        ``world_size`` when it is not 1), less the :attr:`ADDED_FIELDS` that hold their :meth:`unrecorded_values`."""
        values = dataclasses.asdict(self)
        all_names = names is None
        names = [name for name in values if name not in self.EXECUTION_FIELDS] if names is None else names
        defaults = {name: value for name, value in self.unrecorded_values().items() if name in self.ADDED_FIELDS}
        digested = {name: values[name] for name in names
                    if not (name in defaults and values[name] == defaults[name])}
        if self.world_size != 1 and all_names:  # like an added field at its default 1: single-process tags unchanged
            digested["world_size"] = self.world_size
        return digested

    def digest(self) -> str:
        """8 hex digits identifying every result-relevant setting."""
        return digest_of(self.experiment, self.digest_values())

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Settings from a mapping holding (at least) every field, e.g. a notebook's ``globals()``.

        A notebook's globals carry the kernel's input history: a parameter its parameters cells (shipped or
        injected by papermill) assign that is not a field is refused first
        (:func:`afr.notebook_parameters.check_notebook_parameters`)."""
        check_notebook_parameters(values, cls.field_names(), f"this notebook ({cls.__name__})")
        missing = [name for name in cls.field_names() if name not in values]
        if missing:
            raise TypeError(f"{cls.__name__}: no value for {', '.join(missing)}")
        shadowed = [name for name in cls.field_names() if callable(values[name]) or hasattr(values[name], "__path__")]
        if shadowed:  # e.g. a notebook import that rebinds a parameter's name
            raise TypeError(f"{cls.__name__}: {', '.join(shadowed)} is a function or module, not a setting value")
        settings = cls(**{name: values[name] for name in cls.field_names()})
        settings.check_world_size()
        return settings

    def table_columns(self) -> dict[str, Any]:
        """The :attr:`TABLE_SETTINGS` and their values: the settings columns of this run's tidy rows; then the
        :attr:`ADDED_TABLE_SETTINGS` that differ from their :meth:`unrecorded_values`."""
        defaults = self.unrecorded_values()
        added = {name: getattr(self, name) for name in self.ADDED_TABLE_SETTINGS if getattr(self, name) != defaults[name]}
        return {**{name: getattr(self, name) for name in self.TABLE_SETTINGS}, **added}


def job_settings(batch_size: int | None = None) -> dict[str, Any]:
    """What a record adds to its settings in a job of several processes: ``world_size`` and, given the global
    ``batch_size``, ``batch_size_per_process``; ``{}`` in a single process."""
    world = job_world_size()
    if world == 1:
        return {}
    extra: dict[str, Any] = {"world_size": world}
    if batch_size is not None:
        extra["batch_size_per_process"] = batch_size // world
    return extra


class MethodSeedGrid:
    """Mixin for the settings of an experiment that runs a grid of (``method``, ``seed``) runs (notebooks 03-05):
    one settings object per run, tagged ``<experiment>_<method>_seed<k>_<digest>``, its run folder named so."""

    def for_run(self, method: str, seed: int, **changes: Any):
        """The settings of one (method, seed) run."""
        return dataclasses.replace(self, method=method, seed=seed, **changes)

    @property
    def tag(self) -> str:
        return f"{self.experiment}_{self.method}_seed{self.seed}_{self.digest()}"

    @property
    def runs_folder(self) -> Path:
        """Where this experiment's run folders go: ``output_dir``, else ``runs/``."""
        from afr.paths import runs_root

        return Path(self.output_dir) if self.output_dir else runs_root()

    @property
    def run_dir(self) -> Path:
        return self.runs_folder / self.tag


# ------------------------------------------------------------------------------------------ command line
def _argument_type(annotation: Any) -> tuple[type, bool, bool]:
    """``(scalar type, optional, is a tuple)`` of a field annotation such as ``tuple[str, ...] | None``."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        (annotation,) = members
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], optional, True
    return annotation, optional, False


def add_arguments(parser: argparse.ArgumentParser, settings_class: type[ExperimentSettings]) -> None:
    """One ``--option`` per field of ``settings_class``, with its type, default, help and choices."""
    hints = typing.get_type_hints(settings_class)
    defaults = settings_class()
    for spec in dataclasses.fields(settings_class):
        scalar, _, is_tuple = _argument_type(hints[spec.name])
        # the declared default (a default resolved by the settings, e.g. per profile, is resolved again there)
        default = spec.default if spec.default is not dataclasses.MISSING else getattr(defaults, spec.name)
        help_text = spec.metadata.get("help", "")
        flag = "--" + spec.name.replace("_", "-")
        if scalar is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {default})")
            continue
        options: dict[str, Any] = {"type": scalar, "default": default, "help": f"{help_text} (default: {default})"}
        if spec.metadata.get("choices"):
            options["choices"] = spec.metadata["choices"]
        if is_tuple:
            options["nargs"] = "+"
        parser.add_argument(flag, **options)


def settings_from_arguments(args: argparse.Namespace, settings_class: type[ExperimentSettings]):
    """The settings an :func:`add_arguments` parser produced."""
    return settings_class.from_mapping(vars(args))
