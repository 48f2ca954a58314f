"""The training loop: AdamW + warm-up/cosine, accumulation, clipping, mixed precision, DDP, resume.

A model is any ``nn.Module`` called as ``model(images=..., labels=..., **extra)`` that returns an
object with a scalar ``.loss`` tensor (or a mapping with a ``"loss"`` entry) and optionally
``.terms`` (``"terms"``): a dict ``name -> scalar tensor`` of the loss's parts (e.g. ``margin``,
``contrastive``, ``domain``), only logged, never backpropagated separately. A training dataset
yields ``(image, label)`` or ``(image, label, domain)`` with ``image`` an ``HxWx3`` uint8 array;
:func:`collate_samples` turns a list of them into ``{'images': float (B,3,H,W) in [0,1], 'labels':
long (B,), 'domains': long (B,)}``. An optional ``augment`` callable maps the image batch to an
augmented one on the training device before the forward pass; a model whose ``needs_clean_view`` is true
also gets the batch's un-augmented view as ``clean_images`` (the augmentation's ``views(images) -> (augmented,
clean)``, e.g. :meth:`afr.data.augment.FaceAugment.views`: the same flip, no RandAugment). Random numbers a dataset draws
(python, numpy or torch global RNG) are seeded per batch from ``(seed, epoch, batch, rank)`` (see
:mod:`afr.train.sampler`), so they do not depend on ``num_workers`` or on where a run was resumed.

Outputs in ``config.output_dir``: ``config.json`` and ``run.json`` (seed, world size, versions),
``metrics.jsonl`` (one line per epoch: ``train_loss``, ``train_<term>`` per loss term, learning
rate, evaluator metrics), ``tensorboard/`` (``train/loss``, ``train/<term>``, lr, grad-norm every
``log_every`` steps; epoch metrics; the same scalars go to Weights & Biases, offline unless ``WANDB_MODE`` says
otherwise, when ``config.wandb`` is set and the optional ``wandb`` package is installed) and
``checkpoints/checkpoint-<step>.pt`` (see
:mod:`afr.train.checkpoint`). Only rank 0 writes; the JSON files are replaced atomically. A fresh
``fit`` refuses (:class:`RunExistsError`) to start in a folder that already holds a run unless
``config.overwrite`` is set.

Resuming (``fit(resume=True)``) restores model, optimizer, scheduler, grad scaler, every rank's RNG
state and the position in the epoch, so a run killed after a checkpoint and resumed takes exactly
the optimizer steps an uninterrupted run takes (bitwise on CPU; on CUDA with ``deterministic=True``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from afr.io import atomic_write_text, claim_folder
from afr.train import distributed
from afr.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_state,
    model_state,
    remove_stale_temp_files,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from afr.train.config import ConfigError, TrainConfig
from afr.train.sampler import IdentityBatchSampler, ResumableSampler, SeededBatches, SeededFetch
from afr.train.schedule import build_scheduler

logger = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], Mapping[str, Any]]
#: names a loss term may not take: they are the engine's own ``train/...`` scalars
_RESERVED_TERM_NAMES = ("loss", "lr", "grad_norm")
#: config fields whose change makes a resumed run differ from the interrupted one
_RESUME_SENSITIVE = ("batch_size", "grad_accum_steps", "seed", "shuffle", "drop_last", "lr", "min_lr", "epochs",
                     "sampler", "images_per_identity")


class RunExistsError(FileExistsError):
    """A fresh ``fit`` would replace the run already in ``output_dir``; the message says what to do."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    #: optimizer steps taken in total (including those before a resume)
    step: int
    #: epochs completed
    epoch: int
    #: one dict per completed epoch (also in ``metrics.jsonl``)
    history: list[dict[str, Any]]
    #: the newest checkpoint written or resumed from (``None`` if none)
    last_checkpoint: Path | None
    output_dir: Path
    #: this process's loss at each optimizer step taken in this ``fit`` call (mean over micro-batches)
    step_losses: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------ batches
def collate_samples(samples: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """``[(image HxWx3 uint8, label[, domain]), ...]`` -> ``{'images', 'labels'[, 'domains']}``.

    Images become a float tensor ``(B, 3, H, W)`` in ``[0, 1]``; labels and domains ``long``.
    All samples must have the same image size and the same tuple length.
    """
    if not samples:
        raise ValueError("collate_samples got an empty batch")
    arity = len(samples[0])
    images = []
    for index, sample in enumerate(samples):
        if not isinstance(sample, (tuple, list)) or len(sample) not in (2, 3) or len(sample) != arity:
            raise ValueError(
                f"batch sample {index}: expected (image, label) or (image, label, domain) like the first "
                f"sample, got {type(sample).__name__} of length {len(sample) if hasattr(sample, '__len__') else '?'}"
            )
        image = sample[0]
        if isinstance(image, torch.Tensor):
            image = image.numpy()
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise ValueError(
                f"batch sample {index}: image must be an HxWx3 uint8 array, got "
                f"{getattr(image, 'dtype', type(image).__name__)} of shape {getattr(image, 'shape', None)}"
            )
        if images and image.shape != images[0].shape:
            raise ValueError(f"batch sample {index}: image shape {image.shape} differs from {images[0].shape}")
        images.append(image)
    batch = {
        "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0),
        "labels": torch.tensor([int(sample[1]) for sample in samples], dtype=torch.long),
    }
    if arity == 3:
        batch["domains"] = torch.tensor([int(sample[2]) for sample in samples], dtype=torch.long)
    return batch


def _loss_and_terms(output: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model output's scalar ``loss`` and its named ``terms`` (``{}`` when it has none)."""
    is_mapping = isinstance(output, Mapping)
    loss = output.get("loss") if is_mapping else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(
            f"the model returned {type(output).__name__} without a scalar .loss tensor; "
            "models must return an object with a .loss attribute"
        )
    raw_terms = (output.get("terms") if is_mapping else getattr(output, "terms", None)) or {}
    if not isinstance(raw_terms, Mapping):
        raise TypeError(f"the model's .terms must be a dict name -> scalar tensor, got {type(raw_terms).__name__}")
    terms = {}
    for name, value in raw_terms.items():
        if not isinstance(name, str) or name in _RESERVED_TERM_NAMES:
            raise ValueError(f"loss term name {name!r} is not allowed (a string other than {_RESERVED_TERM_NAMES})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.tensor(float(value), device=loss.device)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(f"loss term {name!r} must be a scalar tensor, got {type(value).__name__}")
        terms[name] = value.reshape(()).to(loss.device)
    return loss.reshape(()), terms


def _holds_run(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds an earlier run: a checkpoint, or a ``metrics.jsonl`` with a line."""
    if list_checkpoints(output_dir / "checkpoints"):
        return True
    metrics = output_dir / "metrics.jsonl"
    return metrics.is_file() and bool(metrics.read_text().strip())


class _StepSums:
    """Per-name sums of detached scalar tensors over one optimizer step's micro-batches.

    They stay on the device, so a step costs one device-to-host transfer (in :meth:`pop_means`).
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value
            self._counts[name] = self._counts.get(name, 0) + 1

    def pop_means(self) -> dict[str, float]:
        """Each name's mean over the micro-batches that reported it; then start over."""
        names = list(self._sums)
        means = torch.stack([self._sums[name] / self._counts[name] for name in names])
        self._sums, self._counts = {}, {}
        return dict(zip(names, means.tolist()))


class _RunningMeans:
    """Running means of named numbers (sum and count per name): a log window, or an epoch."""

    def __init__(self, state: Mapping[str, Sequence[float]] | None = None) -> None:
        self._totals = {name: [float(total), int(count)] for name, (total, count) in (state or {}).items()}

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            total = self._totals.setdefault(name, [0.0, 0])
            total[0] += value
            total[1] += 1

    def means(self) -> dict[str, float]:
        return {name: total / count for name, (total, count) in self._totals.items() if count}

    def state(self) -> dict[str, list[float]]:
        """``{name: [sum, count]}``: what a checkpoint stores to continue the means after a resume."""
        return {name: list(total) for name, total in self._totals.items()}


def _build_param_groups(
    model: nn.Module, param_groups: Iterable[Mapping[str, Any]] | None, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer groups over ``requires_grad`` parameters only.

    By default matrices/filters (``ndim >= 2``) get ``weight_decay`` and biases/norm scales none.
    Caller groups are kept as given (their own ``lr``/``weight_decay`` honoured), minus frozen params.
    """
    if param_groups is None:
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = []
        for group in param_groups:
            if "params" not in group:
                raise ValueError("every entry of param_groups needs a 'params' list")
            groups.append({**group, "params": [p for p in group["params"] if p.requires_grad]})
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters (none with requires_grad=True)")
    return groups


def _numeric(value: Any) -> Any:
    """Evaluator values as plain python (floats for numbers) so they go to JSON and TensorBoard."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def _import_wandb() -> Any:
    """The ``wandb`` module, or a ConfigError saying how to get it (it is an optional extra, not a dependency)."""
    try:
        import wandb
    except ImportError as error:
        raise ConfigError(
            "TrainConfig.wandb=True but the wandb package is not installed (pip install wandb), "
            f"or set wandb=False to log to TensorBoard only ({error})"
        ) from None
    return wandb


def _dataset_labels(dataset: Any) -> np.ndarray:
    """Every sample's identity: ``dataset.labels`` when present, else read sample by sample."""
    from afr.data.subsets import dataset_labels

    return dataset_labels(dataset)


def _dataset_domains(dataset: Any) -> np.ndarray | None:
    """Every sample's domain: ``dataset.domains`` when it is one integer per sample; for a subset
    (``.dataset`` and ``.indices``, e.g. ``RelabelledSubset``, ``torch.utils.data.Subset``) its
    parent's domains at those indices; else ``None``."""
    domains = getattr(dataset, "domains", None)
    if domains is not None and not isinstance(domains, (bool, str)):
        try:
            array = np.asarray(domains)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.ndim == 1 and len(array) == len(dataset) and (
            np.issubdtype(array.dtype, np.integer)
        ):
            return array.astype(np.int64)
    parent, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if parent is not None and indices is not None:
        parent_domains = _dataset_domains(parent)
        if parent_domains is not None:
            return parent_domains[np.asarray(indices, dtype=np.int64)]
    return None


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """Trains ``model`` on ``train_dataset`` as ``config`` says; see the module docstring.

    Args:
        model: module following the ``model(images=, labels=, **extra).loss`` convention.
        train_dataset: map-style dataset of ``(image, label[, domain])`` samples.
        config: the run's settings.
        augment: optional callable ``images -> images`` applied to each batch on the device.
        evaluators: ``name -> callable(model) -> {metric: value}``, called on rank 0 at the end of
            every epoch with the (unwrapped) model in eval mode under ``torch.no_grad``; results go
            to the history as ``"<name>/<metric>"`` (every rank's: rank 0 sends its epoch record).
        param_groups: optional optimizer groups (dicts with ``params`` and e.g. ``lr``); frozen
            parameters are dropped from them.

    Under ``torchrun`` the process group is joined here (see :mod:`afr.train.distributed`), the
    model is wrapped in DDP and each rank reads its own shard of every epoch.

    ``config.sampler='identity'`` draws batches of identities x ``config.images_per_identity`` images
    (:class:`~afr.train.sampler.IdentityBatchSampler`) from the dataset's identities
    (``train_dataset.labels``, else read sample by sample) and domains (``train_dataset.domains``, or
    a subset's parent's; none: no domain mixing).
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        config: TrainConfig,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        evaluators: Mapping[str, Evaluator] | None = None,
        param_groups: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        self.config = config
        if config.wandb:
            _import_wandb()  # a missing optional package fails here, before any work
        self.dist = distributed.init_distributed()
        self.device = config.resolve_device(self.dist.local_rank)
        self.precision = config.resolve_precision(self.device)
        if self.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision 'bf16' requested but {torch.cuda.get_device_name(self.device)} lacks bf16")
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.model = model.to(self.device)
        self.train_model = distributed.wrap_model(self.model, self.device, config.find_unused_parameters)
        self.augment = augment.to(self.device) if isinstance(augment, nn.Module) else augment
        #: the model also takes the un-augmented view of each batch (``clean_images``; see the module docstring)
        self.clean_view = bool(getattr(model, "needs_clean_view", False))
        if self.clean_view and self.augment is not None and not callable(getattr(self.augment, "views", None)):
            raise ConfigError(
                f"the model reads the clean view of each batch (needs_clean_view), but the augmentation "
                f"{type(self.augment).__name__} has no views(images) -> (augmented, clean) method (FaceAugment has)")
        self.evaluators = dict(evaluators or {})
        self.train_dataset = train_dataset
        self.sampler: ResumableSampler | IdentityBatchSampler
        if config.sampler == "identity":
            self.sampler = IdentityBatchSampler(
                _dataset_labels(train_dataset),
                config.batch_size,
                config.images_per_identity,
                domains=_dataset_domains(train_dataset),
                seed=config.seed,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
            )
        else:
            self.sampler = ResumableSampler(
                len(train_dataset),  # type: ignore[arg-type]
                config.batch_size,
                seed=config.seed,
                shuffle=config.shuffle,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                drop_last=config.drop_last,
            )
        self.batches_per_epoch = self.sampler.num_batches
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accum_steps)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.warmup_steps is not None:
            warmup = config.warmup_steps
        else:
            warmup = round(config.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(warmup, self.total_steps)

        self.optimizer = torch.optim.AdamW(
            _build_param_groups(self.model, param_groups, config.weight_decay),
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.scheduler = build_scheduler(self.optimizer, self.warmup_steps, self.total_steps, config.lr, config.min_lr)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._trainable = [p for group in self.optimizer.param_groups for p in group["params"]]

        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._epoch_means = _RunningMeans()
        self._writer: Any = None
        self._wandb: Any = None
        self._fit_called = False

    # ------------------------------------------------------------------------ public API
    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train up to ``config.epochs`` epochs.

        ``resume=False`` starts afresh; if ``output_dir`` already holds a run (checkpoints, or a
        ``metrics.jsonl`` with lines) it raises :class:`RunExistsError` before touching anything,
        unless ``config.overwrite`` is set (then the old checkpoints and metrics are deleted).
        ``resume=True`` continues from the newest checkpoint there (or starts afresh if there is
        none); a path resumes from that checkpoint file.
        """
        if self._fit_called and not resume:
            raise RuntimeError("this Trainer has already trained; build a new Trainer for a fresh run")
        # rank 0 holds the folder while it trains: another process training into it is refused at once
        with claim_folder(self.output_dir) if self.dist.is_main else nullcontext():
            return self._fit(resume)

    def _fit(self, resume: bool | str | Path) -> TrainResult:
        if not resume:
            self._refuse_to_replace_a_run()
        self._fit_called = True
        main = self.dist.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.checkpoint_dir)
        restored_from = self._restore(resume)
        if restored_from is None:
            self._start_fresh()
        if main:
            self.config.to_json(self.output_dir / "config.json")
            self._write_run_info(restored_from)
            self._write_metrics()
            self._open_loggers()
        distributed.barrier()

        step_losses: list[float] = []
        try:
            for epoch in range(self.epoch, self.config.epochs):
                self._train_epoch(epoch, step_losses)
                self._end_epoch(epoch)
        finally:
            self._close_loggers()
        return TrainResult(
            step=self.step,
            epoch=self.epoch,
            history=list(self.history),
            last_checkpoint=self.last_checkpoint,
            output_dir=self.output_dir,
            step_losses=step_losses,
        )

    def save_checkpoint(self) -> Path | None:
        """Checkpoint the current position (collective under DDP; rank 0 writes). Returns the path."""
        rng_states = distributed.all_gather_objects(capture_rng_state())
        path = None
        if self.dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": model_state(self.model, full=self.config.checkpoint_full_model),
                "model_is_full": self.config.checkpoint_full_model,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "epoch_means": self._epoch_means.state(),
                "history": self.history,
                "rng": rng_states,
                "world_size": self.dist.world_size,
                "config": self.config.to_dict(),
                "torch_version": str(torch.__version__),
            }
            path = save_checkpoint(
                state, checkpoint_path(self.checkpoint_dir, self.step), keep=self.config.keep_checkpoints
            )
            self.last_checkpoint = path
            logger.info("saved %s (epoch %d, batch %d)", path, self.epoch, self.batch_in_epoch)
        distributed.barrier()
        return path

    def on_step_end(self, step: int, loss: float) -> None:
        """Hook called after every optimizer step (``step`` counts from 1); no-op by default."""

    # ------------------------------------------------------------------------ one epoch
    def _make_loader(self, epoch: int) -> DataLoader:
        """The epoch's loader (from the sampler's position); batches fetched under per-batch seeds.

        Its own generator feeds DataLoader's base-seed draw, so the global torch RNG is not consumed.
        """
        generator = torch.Generator()
        generator.manual_seed((self.config.seed * 1_000_003 + epoch) * 1_009 + self.dist.rank)
        return DataLoader(
            SeededFetch(self.train_dataset),
            batch_sampler=SeededBatches(self.sampler),
            num_workers=self.config.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        if self.clean_view:
            if self.augment is None:
                batch["clean_images"] = batch["images"]
            else:
                with torch.no_grad():
                    batch["images"], batch["clean_images"] = self.augment.views(batch["images"])
        elif self.augment is not None:
            with torch.no_grad():
                batch["images"] = self.augment(batch["images"])
        return batch

    def _train_epoch(self, epoch: int, step_losses: list[float]) -> None:
        config = self.config
        accum = config.grad_accum_steps
        num_batches = self.batches_per_epoch
        start_batch = self.batch_in_epoch if epoch == self.epoch else 0
        self.sampler.set_epoch(epoch, start_batch)
        model = self.train_model
        model.train()
        if isinstance(self.augment, nn.Module):
            self.augment.train()
        ddp = model is not self.model
        progress = tqdm(
            total=num_batches,
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and self.dist.is_main),  # the setting decides, not isatty: a kernel has none
            dynamic_ncols=True,
            leave=False,
        )
        step_sums = _StepSums()
        window = _RunningMeans()
        for batch_index, batch in enumerate(self._make_loader(epoch), start=start_batch):
            group_start = batch_index - batch_index % accum
            group_size = min(accum, num_batches - group_start)
            last_micro = batch_index - group_start == group_size - 1
            sync = nullcontext() if (last_micro or not ddp) else model.no_sync()
            step_sums.add(self._forward_backward(batch, group_size, sync))
            progress.update(1)
            if not last_micro:
                continue

            means, lr_used, grad_norm = self._finish_step(step_sums, epoch, group_start, batch_index)
            loss_value = means["loss"]
            self.batch_in_epoch = batch_index + 1
            step_losses.append(loss_value)
            window.add(means)
            self._epoch_means.add(means)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_used:.2e}", refresh=False)
            if self.step % config.log_every == 0:
                scalars = {f"train/{name}": value for name, value in window.means().items()}
                self._log_scalars({**scalars, "train/lr": lr_used, "train/grad_norm": grad_norm})
                window = _RunningMeans()
            self.on_step_end(self.step, loss_value)
            every = config.checkpoint_every_steps
            if every and self.step % every == 0 and self.batch_in_epoch < num_batches:
                self.save_checkpoint()
        progress.close()

    def _forward_backward(self, batch: dict[str, torch.Tensor], group_size: int, sync: Any) -> dict[str, torch.Tensor]:
        """One micro-batch of a step: to the device (augmented), forward under autocast, backward of the loss
        over ``group_size`` micro-batches inside ``sync`` (DDP's ``no_sync`` or nothing); returns
        ``{"loss": loss, **terms}`` (not yet detached) for the step's sums."""
        batch = self._to_device(batch)
        with sync:
            with self._autocast():
                loss, terms = _loss_and_terms(self.train_model(**batch))
            scaled = loss.float() / group_size
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return {"loss": loss, **terms}

    def _finish_step(self, step_sums: _StepSums, epoch: int, first_batch: int,
                     last_batch: int) -> tuple[dict[str, float], float, float]:
        """End an optimizer step after its micro-batches: the means of their losses (one device-to-host
        transfer), the non-finite check, the optimizer step; returns ``(means, lr used, grad norm)``."""
        means = step_sums.pop_means()
        self._stop_on_nonfinite_loss(means["loss"], epoch, first_batch, last_batch)
        lr_used = self.current_lr
        grad_norm = self._optimizer_step()
        self.step += 1
        return means, lr_used, grad_norm

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on one collated (CPU) batch, the per-batch work of :meth:`fit` when
        ``grad_accum_steps`` is 1: device transfer, augmentation, forward, backward, the loss's device-to-host
        transfer and non-finite check, clipping (with the grad norm's transfer), optimizer and schedule step.

        For measuring the trainer's step outside :meth:`fit` (``bench/gpu_vit_lora_throughput.py``): it
        advances ``step`` but not the position in the epoch, writes nothing, and leaves the train/eval mode of
        the model and the augmentation as they are. Returns the step's loss means, ``lr`` and ``grad_norm``.
        """
        step_sums = _StepSums()
        step_sums.add(self._forward_backward(batch, 1, nullcontext()))
        means, lr_used, grad_norm = self._finish_step(step_sums, self.epoch, self.batch_in_epoch, self.batch_in_epoch)
        return {**means, "lr": lr_used, "grad_norm": grad_norm}

    def _stop_on_nonfinite_loss(self, loss_value: float, epoch: int, first_batch: int, last_batch: int) -> None:
        """Raise FloatingPointError on every rank if any rank's step loss is NaN or infinite.

        Checked after the step's backward passes (so every rank has joined DDP's gradient sync) and
        before the optimizer step, with one all_reduce of a flag: all ranks stop together instead
        of one raising while the others wait in the next collective until its timeout.
        """
        local = not math.isfinite(loss_value)
        if not distributed.any_rank(local, self.device):
            return
        where = f"at epoch {epoch}, batches {first_batch}-{last_batch} (step {self.step + 1})"
        if local:
            raise FloatingPointError(f"non-finite loss {loss_value} {where}")
        raise FloatingPointError(f"non-finite loss on another rank {where} (this rank's loss: {loss_value})")

    def _optimizer_step(self) -> float:
        """Unscale, clip, step, zero grads, advance the schedule; returns the pre-clip grad norm."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(grad_norm.item())

    @property
    def current_lr(self) -> float:
        """The learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _end_epoch(self, epoch: int) -> None:
        """Epoch means of the loss and its terms, evaluators, metrics line, epoch checkpoint."""
        config = self.config
        train_means = distributed.mean_over_ranks(self._epoch_means.means())
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        self._epoch_means = _RunningMeans()
        record: dict[str, Any] = {"epoch": epoch, "step": self.step}
        record.update({f"train_{name}": value for name, value in train_means.items()})
        record["lr"] = self.current_lr

        def evaluate_and_log() -> dict[str, Any]:
            record.update(self._run_evaluators())
            record["time"] = time.time()
            self.history.append(record)
            self._write_metrics()
            epoch_scalars = {k: v for k, v in record.items() if k not in ("epoch", "step", "time")}
            self._log_scalars({k if "/" in k else f"epoch/{k}": v for k, v in epoch_scalars.items()})
            return record

        # rank 0 evaluates and writes; every rank's history gets its record (validation metrics included), and an
        # evaluator's error stops every rank
        shared = distributed.on_main(evaluate_and_log)
        if not self.dist.is_main:
            self.history.append(shared)
        last = self.epoch == config.epochs
        by_epoch = config.checkpoint_every and self.epoch % config.checkpoint_every == 0
        by_step = config.checkpoint_every_steps and self.step % config.checkpoint_every_steps == 0
        if last or by_epoch or by_step:
            self.save_checkpoint()

    def _run_evaluators(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if not self.evaluators:
            return metrics
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for name, evaluate in self.evaluators.items():
                    result = evaluate(self.model)
                    if not isinstance(result, Mapping):
                        raise TypeError(f"evaluator {name!r} returned {type(result).__name__}, expected a dict")
                    for key, value in result.items():
                        metrics[f"{name}/{key}"] = _numeric(value)
        finally:
            self.model.train(was_training)
        return metrics

    # ------------------------------------------------------------------------ start / resume
    def _refuse_to_replace_a_run(self) -> None:
        """Raise RunExistsError on every rank if ``output_dir`` holds a run and ``overwrite`` is off.

        Only reads (rank 0 looks, all ranks learn the answer), so a refused run changes nothing.
        """
        if self.config.overwrite:
            return
        found = self.dist.is_main and _holds_run(self.output_dir)
        if distributed.any_rank(found, self.device):
            raise RunExistsError(
                f"{self.output_dir} already holds a training run (checkpoints or metrics.jsonl): pass --resume "
                "(fit(resume=True) in Python) to continue it, or --overwrite (TrainConfig(overwrite=True)) to delete "
                "it and start again"
            )

    def _start_fresh(self) -> None:
        """Reset the position and seed every RNG; rank 0 deletes old checkpoints and metrics."""
        if self.dist.is_main:
            old = list_checkpoints(self.checkpoint_dir)
            if old:
                logger.warning("fresh run in %s: deleting %d old checkpoint(s)", self.output_dir, len(old))
                for path in old:
                    path.unlink(missing_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        distributed.barrier()
        seed_everything(self.config.seed + self.dist.rank)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history = []
        self._epoch_means = _RunningMeans()
        self.last_checkpoint = None

    def _restore(self, resume: bool | str | Path) -> Path | None:
        """Load the checkpoint ``resume`` points at; returns its path (``None``: start fresh)."""
        if resume is False or resume is None:
            return None
        if resume is True:
            path = latest_checkpoint(self.checkpoint_dir)
            if path is None:
                logger.info("resume requested but %s holds no checkpoint: starting afresh", self.checkpoint_dir)
                return None
        else:
            path = Path(resume)
        state = load_checkpoint(path)
        load_model_state(self.model, state["model"], state["model_is_full"], source=str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: optimizer/scheduler state does not match this model: {exc}") from exc
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state["batch_in_epoch"] > self.batches_per_epoch:
            raise CheckpointError(
                f"{path}: saved at batch {state['batch_in_epoch']} of an epoch that now has only "
                f"{self.batches_per_epoch} batches (dataset or batch size changed)"
            )
        saved_config = state.get("config", {})
        changed = [k for k in _RESUME_SENSITIVE if k in saved_config and saved_config[k] != getattr(self.config, k)]
        if changed:
            logger.warning("%s: resuming with changed %s; the run will not match the original", path, changed)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.history = list(state.get("history", []))
        # checkpoints written before loss terms were logged hold only the loss's [sum, count]
        saved_means = state["epoch_means"] if "epoch_means" in state else {"loss": state.get("epoch_loss", [0.0, 0])}
        self._epoch_means = _RunningMeans(saved_means)
        rng_states = state.get("rng") or []
        if len(rng_states) == self.dist.world_size:
            restore_rng_state(rng_states[self.dist.rank])
        else:
            logger.warning(
                "%s: saved by %d process(es), now %d: RNG re-seeded, not restored",
                path, len(rng_states), self.dist.world_size,
            )
            seed_everything(self.config.seed + self.dist.rank + self.step)
        self.last_checkpoint = path
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)
        return path

    # ------------------------------------------------------------------------ outputs
    def _write_run_info(self, restored_from: Path | None) -> None:
        info = {
            "seed": self.config.seed,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "precision": self.precision,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "train_samples": len(self.train_dataset),  # type: ignore[arg-type]
            "trainable_parameters": sum(p.numel() for p in self._trainable),
            "resumed_from": str(restored_from) if restored_from else None,
            "resumed_at_step": self.step,
            "torch_version": str(torch.__version__),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(self.output_dir / "run.json", json.dumps(info, indent=2) + "\n")

    def _write_metrics(self) -> None:
        """Replace ``metrics.jsonl`` atomically with the history, one line per epoch (after a resume
        this drops the epochs a killed run logged after its checkpoint)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(record) + "\n" for record in self.history))

    def _open_loggers(self) -> None:
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=self.step or None)
            if self.step == 0:
                self._writer.add_text("config", f"```\n{self.config.to_json()}\n```")
        if self.config.wandb:
            wandb = _import_wandb()
            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "adaptface"),
                name=self.output_dir.name,
                dir=str(self.output_dir),
                config=self.config.to_dict(),
                # offline unless the user chose a mode (online, disabled): nothing is uploaded by surprise
                mode=os.environ.get("WANDB_MODE") or "offline",
            )

    def _log_scalars(self, values: Mapping[str, Any]) -> None:
        if not self.dist.is_main:
            return
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._writer is not None:
            for key, value in numbers.items():
                self._writer.add_scalar(key, value, self.step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=self.step)

    def _close_loggers(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
