"""Experiment settings: one dataclass per experiment is the single list of its parameters.

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
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["BaselineSettings", "ExperimentSettings", "MethodSeedGrid", "add_arguments", "settings_from_arguments"]


def setting(default: Any, help: str, choices: tuple | None = None) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with its command-line help (and allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ExperimentSettings:
    """Base of the experiments' settings: run bookkeeping shared by every experiment."""

    #: the experiment's name: prefix of run tags, name of its table ``results/tables/<experiment>.csv``
    experiment: ClassVar[str] = "experiment"
    #: fields that say how a run executes, not what it computes: left out of the tag's digest
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "device", "num_workers", "output_dir", "progress", "resume", "overwrite")
    #: settings written as columns of every tidy-table row (the ones runs of this experiment differ by)
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ()
    #: settings added after results were recorded: they enter the digest only when they differ from their default,
    #: so the tags of the runs recorded before them (which ran at the default) stay valid
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def digest_values(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The settings a digest covers: ``names`` (default: all but :attr:`EXECUTION_FIELDS`), less the
        :attr:`ADDED_FIELDS` that hold their default."""
        values = dataclasses.asdict(self)
        names = [name for name in values if name not in self.EXECUTION_FIELDS] if names is None else names
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in self.ADDED_FIELDS}
        return {name: values[name] for name in names
                if not (name in defaults and values[name] == defaults[name])}

    def digest(self) -> str:
        """8 hex digits identifying every result-relevant setting."""
        values = self.digest_values()
        text = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(f"{self.experiment}:{text}".encode()).hexdigest()[:8]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Settings from a mapping holding (at least) every field, e.g. a notebook's ``globals()``."""
        missing = [name for name in cls.field_names() if name not in values]
        if missing:
            raise TypeError(f"{cls.__name__}: no value for {', '.join(missing)}")
        shadowed = [name for name in cls.field_names() if callable(values[name]) or hasattr(values[name], "__path__")]
        if shadowed:  # e.g. a notebook import that rebinds a parameter's name
            raise TypeError(f"{cls.__name__}: {', '.join(shadowed)} is a function or module, not a setting value")
        return cls(**{name: values[name] for name in cls.field_names()})

    def table_columns(self) -> dict[str, Any]:
        """The :attr:`TABLE_SETTINGS` and their values: the settings columns of this run's tidy rows."""
        return {name: getattr(self, name) for name in self.TABLE_SETTINGS}


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


@dataclass
class BaselineSettings(ExperimentSettings):
    """One baseline run (notebook 02, ``python -m afr baseline``): zero-shot vs LoRA + margin loss."""

    experiment: ClassVar[str] = "baseline"
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "data_profile", "backbone", "rank", "margin", "head_init", "epochs", "batch_size", "lr", "head_lr",
        "score_test")

    backbone: str = setting("dlib-resnet29", "backbone: dlib-resnet29 (embedded), dinov2-vits14, clip-vitb16 (full)")
    weights: str | None = setting(None, "backbone weights directory (default: the shared dlib weights)")
    data_profile: str = setting("embedded", "embedded: the CPU benchmark of notebook 01; full: CASIA-WebFace + "
                                "the five InsightFace packs", choices=("embedded", "full"))
    embedded_root: str | None = setting(None, "embedded benchmark folder (default data/processed/embedded)")
    train_rec: str | None = setting(None, "full profile: CASIA-WebFace folder (train.rec/.idx/property)")
    bins_dir: str | None = setting(None, "full profile: folder with lfw.bin cfp_fp.bin agedb_30.bin calfw.bin "
                                   "cplfw.bin")
    num_identities: int | None = setting(None, "full profile: seeded training-identity subset (FRoundation: "
                                         "1000, 10000); default all")
    val_identities: int = setting(100, "full profile: identities held out of the training pack (never trained "
                                  "on) whose pairs are the validation pack")
    benchmarks: tuple[str, ...] = setting((), "test packs to score (default: all of the profile)")
    rank: int = setting(8, "LoRA rank r (FRoundation: 16)")
    alpha: float | None = setting(None, "LoRA alpha (default: = rank)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch")
    use_rslora: bool = setting(False, "rank-stabilised scaling alpha/sqrt(r)")
    lora_targets: tuple[str, ...] | None = setting(None, "module names to adapt (default: the backbone's: "
                                                   "ResNet convolutions, ViT q/v projections)")
    margin: str = setting("cosface", "margin loss", choices=("cosface", "arcface"))
    s: float = setting(64.0, "logit scale")
    m: float | None = setting(None, "margin (default CosFace 0.35, ArcFace 0.5)")
    head_init: str = setting("random", "class centres: random N(0, 0.01) (InsightFace), or class-mean: the mean "
                             "unit embedding of each training identity under the frozen backbone",
                             choices=("random", "class-mean"))
    epochs: int = setting(4, "training epochs")
    batch_size: int = setting(32, "images per optimizer step")
    lr: float = setting(3e-4, "AdamW learning rate of the LoRA matrices (warm-up + cosine; chosen on validation, README)")
    head_lr: float = setting(1e-2, "AdamW learning rate of the class centres")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    warmup_epochs: float = setting(0.5, "linear warm-up length in epochs")
    augment: bool = setting(True, "flip + per-image RandAugment(4, 16) during training")
    eval_every_epoch: bool = setting(True, "score the validation packs after every epoch")
    score_test: bool = setting(True, "score the test packs at the end (off for runs that only choose settings)")
    seed: int = setting(0, "seed of LoRA init, class centres, batch order and augmentation")
    device: str = setting("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    num_workers: int = setting(0, "DataLoader worker processes decoding the training pack")
    output_dir: str | None = setting(None, "run folder (TensorBoard, checkpoints, adapter); default runs/<tag>")
    resume: bool = setting(False, "continue the run folder's unfinished run from its last checkpoint")
    overwrite: bool = setting(False, "replace an earlier run with the same tag (its checkpoints, adapter, result)")
    progress: bool = setting(True, "progress bars")

    def __post_init__(self) -> None:
        if self.data_profile not in ("embedded", "full"):
            raise ValueError(f"data_profile must be 'embedded' or 'full', got {self.data_profile!r}")
        if self.head_init not in ("random", "class-mean"):
            raise ValueError(f"head_init must be 'random' or 'class-mean', got {self.head_init!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or start it again")
        self.benchmarks = tuple(self.benchmarks or ())
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)

    @property
    def tag(self) -> str:
        """A file-name-safe run name, e.g. ``baseline_embedded_dlib-resnet29_r8_seed0_1a2b3c4d``."""
        return f"{self.experiment}_{self.data_profile}_{self.backbone}_r{self.rank}_seed{self.seed}_{self.digest()}"

    def lora_settings(self):
        """The :class:`~afr.adapters.lora.LoraSettings` of this run."""
        from afr.adapters.lora import LoraSettings

        return LoraSettings(r=self.rank, alpha=float(self.alpha or self.rank), dropout=self.lora_dropout,
                            use_rslora=self.use_rslora, target_modules=self.lora_targets)


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
        default = getattr(defaults, spec.name)
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
