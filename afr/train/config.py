"""Training settings: one JSON-serialisable dataclass that is saved beside every run."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from afr.io import atomic_write_text

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SAMPLERS = ("random", "identity")


class ConfigError(ValueError):
    """A training setting is invalid or a config file cannot be read; the message names it."""


@dataclass
class TrainConfig:
    """Everything that defines a training run besides the model and the data.

    ``batch_size`` is per process: under ``torchrun`` with N processes one optimizer step sees
    ``N * batch_size * grad_accum_steps`` samples. ``lr``/``min_lr`` apply to the default parameter
    groups; caller-supplied groups with their own ``lr`` decay to ``lr_group * min_lr / lr``.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    #: warm-up length in epochs (fractional allowed); ``warmup_steps`` overrides it when set
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    min_lr: float = 0.0
    #: max global L2 norm of the gradients; ``None`` or 0 disables clipping
    grad_clip: float | None = 1.0
    grad_accum_steps: int = 1
    #: 'auto' (bf16 autocast on CUDA, fp32 on CPU) | 'bf16' | 'fp16' (with a grad scaler) | 'fp32'
    precision: str = "auto"
    num_workers: int = 0
    seed: int = 0
    output_dir: str = "runs/train"
    #: save a checkpoint every this many epochs (0 disables; the last epoch is always saved)
    checkpoint_every: int = 1
    #: also save mid-epoch every this many optimizer steps (``None`` disables)
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 3
    #: save the full model state instead of trainable parameters + buffers only
    checkpoint_full_model: bool = False
    log_every: int = 10
    tensorboard: bool = True
    #: also log to Weights & Biases (needs the ``wandb`` package, not a project dependency); offline unless
    #: the environment sets ``WANDB_MODE``, so nothing leaves the machine by default (``wandb sync`` uploads)
    wandb: bool = False
    #: tqdm.auto bars (a widget in a notebook, text on a terminal); off under papermill/CI (`progress: false`)
    progress: bool = True
    #: 'auto' (CUDA if available, on the process's LOCAL_RANK under torchrun) | 'cpu' | 'cuda' | 'cuda:N'
    device: str = "auto"
    drop_last: bool = True
    shuffle: bool = True
    #: 'random' (shuffled samples, :class:`~afr.train.sampler.ResumableSampler`) | 'identity' (batches of
    #: ``batch_size / images_per_identity`` identities x ``images_per_identity`` images, mixing domains:
    #: :class:`~afr.train.sampler.IdentityBatchSampler`; ``shuffle`` and ``drop_last`` do not apply)
    sampler: str = "random"
    #: images of each identity in a batch when ``sampler='identity'`` (must divide ``batch_size``)
    images_per_identity: int = 4
    #: passed to DistributedDataParallel (needed when some parameters get no gradient in a step)
    find_unused_parameters: bool = False
    #: torch.use_deterministic_algorithms(True) for bitwise-reproducible runs (slower on CUDA)
    deterministic: bool = False
    #: a fresh ``fit`` into an ``output_dir`` that already holds a run (checkpoints or metrics) deletes
    #: its checkpoints and metrics instead of refusing with RunExistsError (``fit(resume=True)`` ignores it)
    overwrite: bool = False
    #: free-form notes recorded with the run (e.g. model and data description)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "grad_accum_steps", "keep_checkpoints", "log_every", "images_per_identity")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"TrainConfig.min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"TrainConfig.warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"TrainConfig.grad_clip must be >= 0 or None, got {self.grad_clip!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"TrainConfig.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "identity" and self.batch_size % self.images_per_identity:
            raise ConfigError(
                f"TrainConfig.batch_size={self.batch_size} must be a multiple of "
                f"images_per_identity={self.images_per_identity} with sampler='identity'"
            )
        if self.num_workers < 0:
            raise ConfigError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers!r}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"TrainConfig.checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ConfigError(
                f"TrainConfig.checkpoint_every_steps must be >= 1 or None, got {self.checkpoint_every_steps!r}"
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    # ----------------------------------------------------------------------------- resolution
    def resolve_device(self, local_rank: int | None = None) -> torch.device:
        """The device to train (and evaluate) on: each process of a torchrun job on its own GPU.

        'auto' picks ``cuda:local_rank`` when CUDA is available (else the CPU), and 'cuda' picks ``cuda:local_rank``;
        ``local_rank`` defaults to this process's ``LOCAL_RANK`` (0 in a single process). 'cuda:N' names one GPU,
        which every process of a job with several would share: refused there (use 'auto' or 'cuda')."""
        from afr.train.distributed import job_local_rank, job_world_size

        if local_rank is None:
            local_rank = job_local_rank()
        if self.device == "auto":
            return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"TrainConfig.device={self.device!r} but CUDA is not available")
        if device.type == "cuda" and device.index is None:
            return torch.device(f"cuda:{local_rank}")
        if device.type == "cuda" and job_world_size() > 1:
            raise ConfigError(f"TrainConfig.device={self.device!r} names one GPU for all {job_world_size()} processes "
                              "of this torchrun job: use 'auto' or 'cuda' (each process takes cuda:LOCAL_RANK)")
        return device

    def resolve_precision(self, device: torch.device) -> str:
        """'bf16', 'fp16' or 'fp32' for ``device``: 'auto' is bf16 on CUDA and fp32 on CPU."""
        if self.precision == "auto":
            return "bf16" if device.type == "cuda" else "fp32"
        return self.precision

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict; unknown keys raise a ConfigError naming them and ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown TrainConfig field(s) {unknown}")
        return cls(**values)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`to_json`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} not found")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(values).__name__}")
        return cls.from_dict(values, source=str(path))
