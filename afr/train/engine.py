"""The training loop: AdamW + warm-up/cosine, accumulation, clipping, mixed precision, DDP, resume.

A model is any ``nn.Module`` called as ``model(images=..., labels=..., **extra)`` that returns an
object with a scalar ``.loss`` tensor (or a mapping with a ``"loss"`` entry). A training dataset
yields ``(image, label)`` or ``(image, label, domain)`` with ``image`` an ``HxWx3`` uint8 array;
:func:`collate_samples` turns a list of them into ``{'images': float (B,3,H,W) in [0,1], 'labels':
long (B,), 'domains': long (B,)}``. An optional ``augment`` callable maps the image batch to an
augmented one on the training device before the forward pass.

Outputs in ``config.output_dir``: ``config.json`` and ``run.json`` (seed, world size, versions),
``metrics.jsonl`` (one line per epoch: train loss, learning rate, evaluator metrics),
``tensorboard/`` (loss, lr, grad-norm every ``log_every`` steps; epoch metrics) and
``checkpoints/checkpoint-<step>.pt`` (see :mod:`afr.train.checkpoint`). Only rank 0 writes.

Resuming (``fit(resume=True)``) restores model, optimizer, scheduler, grad scaler, every rank's RNG
state and the position in the epoch, so a run killed after a checkpoint and resumed takes exactly
the optimizer steps an uninterrupted run takes (bitwise on CPU; on CUDA with ``deterministic=True``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
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
from tqdm import tqdm

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
from afr.train.sampler import ResumableSampler
from afr.train.schedule import build_scheduler

logger = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], Mapping[str, Any]]
#: config fields whose change makes a resumed run differ from the interrupted one
_RESUME_SENSITIVE = ("batch_size", "grad_accum_steps", "seed", "shuffle", "drop_last", "lr", "min_lr", "epochs")


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


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive python/numpy seeds from the seed torch gave this worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _loss_of(output: Any) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(
            f"the model returned {type(output).__name__} without a scalar .loss tensor; "
            "models must return an object with a .loss attribute"
        )
    return loss.reshape(())


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
            to the history as ``"<name>/<metric>"``.
        param_groups: optional optimizer groups (dicts with ``params`` and e.g. ``lr``); frozen
            parameters are dropped from them.

    Under ``torchrun`` the process group is joined here (see :mod:`afr.train.distributed`), the
    model is wrapped in DDP and each rank reads its own shard of every epoch.
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
        self.evaluators = dict(evaluators or {})
        self.train_dataset = train_dataset
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
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        self._writer: Any = None
        self._wandb: Any = None
        self._fit_called = False

    # ------------------------------------------------------------------------ public API
    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train up to ``config.epochs`` epochs.

        ``resume=False`` starts afresh (old checkpoints in ``output_dir/checkpoints`` are deleted);
        ``resume=True`` continues from the newest checkpoint there (or starts afresh if there is
        none); a path resumes from that checkpoint file.
        """
        if self._fit_called and not resume:
            raise RuntimeError("this Trainer has already trained; build a new Trainer for a fresh run")
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
            self._rewrite_metrics()
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
                "epoch_loss": [self._epoch_loss_sum, self._epoch_loss_count],
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
        generator = torch.Generator()
        generator.manual_seed((self.config.seed * 1_000_003 + epoch) * 1_009 + self.dist.rank)
        return DataLoader(
            self.train_dataset,
            batch_sampler=self.sampler,
            num_workers=self.config.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker,
            generator=generator,
        )

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        if self.augment is not None:
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
            disable=not (config.progress and self.dist.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
            leave=False,
        )
        step_loss = torch.zeros((), device=self.device)
        window: list[float] = []
        for batch_index, batch in enumerate(self._make_loader(epoch), start=start_batch):
            group_start = batch_index - batch_index % accum
            group_size = min(accum, num_batches - group_start)
            last_micro = batch_index - group_start == group_size - 1
            batch = self._to_device(batch)
            sync = nullcontext() if (last_micro or not ddp) else model.no_sync()
            with sync:
                with self._autocast():
                    loss = _loss_of(model(**batch))
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at epoch {epoch}, batch {batch_index} (step {self.step + 1})"
                    )
                scaled = loss.float() / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            step_loss += loss.detach().float()
            progress.update(1)
            if not last_micro:
                continue

            lr_used = self.current_lr
            grad_norm = self._optimizer_step()
            self.step += 1
            self.batch_in_epoch = batch_index + 1
            loss_value = float((step_loss / group_size).item())
            step_loss.zero_()
            step_losses.append(loss_value)
            window.append(loss_value)
            self._epoch_loss_sum += loss_value
            self._epoch_loss_count += 1
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_used:.2e}", refresh=False)
            if self.step % config.log_every == 0:
                self._log_scalars(
                    {"train/loss": sum(window) / len(window), "train/lr": lr_used, "train/grad_norm": grad_norm}
                )
                window.clear()
            self.on_step_end(self.step, loss_value)
            every = config.checkpoint_every_steps
            if every and self.step % every == 0 and self.batch_in_epoch < num_batches:
                self.save_checkpoint()
        progress.close()

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
        """Evaluators, metrics line, epoch checkpoint."""
        config = self.config
        train_loss = distributed.all_reduce_mean(
            self._epoch_loss_sum / max(1, self._epoch_loss_count), self.device
        )
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
        record: dict[str, Any] = {"epoch": epoch, "step": self.step, "train_loss": train_loss, "lr": self.current_lr}
        if self.dist.is_main:
            record.update(self._run_evaluators())
            record["time"] = time.time()
            self.history.append(record)
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            epoch_scalars = {k: v for k, v in record.items() if k not in ("epoch", "step", "time")}
            self._log_scalars({k if "/" in k else f"epoch/{k}": v for k, v in epoch_scalars.items()})
        else:
            self.history.append(record)
        distributed.barrier()
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
    def _start_fresh(self) -> None:
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
        self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
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
        self._epoch_loss_sum, self._epoch_loss_count = state.get("epoch_loss", [0.0, 0])
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
        (self.output_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")

    def _rewrite_metrics(self) -> None:
        """``metrics.jsonl`` = the history of the restored run (drops epochs a killed run logged later)."""
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        temp = self.metrics_path.with_suffix(".jsonl.tmp")
        temp.write_text(lines)
        os.replace(temp, self.metrics_path)

    def _open_loggers(self) -> None:
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=self.step or None)
            if self.step == 0:
                self._writer.add_text("config", f"```\n{self.config.to_json()}\n```")
        if os.environ.get("WANDB_MODE", "").lower() == "offline":
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None:
                self._wandb = wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "adaptface"),
                    dir=str(self.output_dir),
                    config=self.config.to_dict(),
                    mode="offline",
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
