"""Subprocess helper for tests/test_train_resume.py and tests/test_train_ddp.py (not a test module).

Runs a tiny :class:`afr.train.Trainer` job and writes, per rank, ``result-rank<r>.json`` (step
losses as exact ``float.hex`` strings) and ``params-rank<r>.pt`` (final model state) into
``--output-dir``. ``--kill-after-step k`` makes the process SIGKILL itself right after optimizer
step ``k``, like a crash or a pre-empted job. The data and augmentation draw from numpy's, python's
and torch's global RNGs, so an exact resume needs all three restored. ``--nan-on-rank r
--nan-at-forward n`` makes rank ``r``'s ``n``-th forward pass return a NaN loss; a
FloatingPointError is then recorded in ``error-rank<r>.json`` (type, message, time) and re-raised.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from afr.train import TrainConfig, Trainer, distributed
from afr.train.smoke import SyntheticFaces, TinyClassifier


class JitteredFaces(SyntheticFaces):
    """SyntheticFaces with a brightness shift drawn from numpy's global RNG for every sample."""

    def __getitem__(self, index: int) -> tuple:
        image, label = super().__getitem__(index)[:2]
        shift = np.random.randint(0, 16)
        return np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8), label


def noisy_flip(images: torch.Tensor) -> torch.Tensor:
    """Batch augmentation using python's RNG (flip or not) and torch's RNG (additive noise)."""
    if random.random() < 0.5:
        images = images.flip(-1)
    return (images + 0.05 * torch.randn_like(images)).clamp(0.0, 1.0)


class NanOnRank(TinyClassifier):
    """TinyClassifier whose ``at_forward``-th forward pass (counting from 1) on ``rank`` gives a NaN loss."""

    def __init__(self, rank: int | None, at_forward: int | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_rank, self.at_forward, self.forwards = rank, at_forward, 0

    def forward(self, images, labels=None, **extra):
        output = super().forward(images, labels)
        self.forwards += 1
        if self.forwards == self.at_forward and distributed.get_rank() == self.nan_rank:
            output.loss = output.loss * float("nan")
        return output


class KillingTrainer(Trainer):
    """Trainer that SIGKILLs its own process after optimizer step ``kill_after_step``."""

    kill_after_step: int | None = None

    def on_step_end(self, step: int, loss: float) -> None:
        if step == self.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--checkpoint-every-steps", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--kill-after-step", type=int, default=None)
    parser.add_argument("--random-data", action="store_true", help="jittered data, noisy-flip augment")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--nan-on-rank", type=int, default=None)
    parser.add_argument("--nan-at-forward", type=int, default=None)
    parser.add_argument("--dist-timeout", type=float, default=1800.0, help="process-group timeout in seconds")
    args = parser.parse_args()

    distributed.init_distributed(timeout_s=args.dist_timeout)
    torch.manual_seed(0)
    model = NanOnRank(args.nan_on_rank, args.nan_at_forward, dropout=args.dropout)
    dataset = JitteredFaces(args.samples) if args.random_data else SyntheticFaces(args.samples)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum_steps=args.accum,
        lr=args.lr,
        warmup_steps=2,
        min_lr=args.lr / 10,
        seed=7,
        output_dir=args.output_dir,
        checkpoint_every_steps=args.checkpoint_every_steps,
        num_workers=args.num_workers,
        log_every=2,
        progress=False,
        device="cpu",
    )
    trainer = KillingTrainer(model, dataset, config, augment=noisy_flip if args.random_data else None)
    trainer.kill_after_step = args.kill_after_step
    rank, out = distributed.get_rank(), Path(args.output_dir)
    try:
        try:
            result = trainer.fit(resume=args.resume)
        except FloatingPointError as exc:
            error = {"rank": rank, "type": type(exc).__name__, "message": str(exc), "time": time.time()}
            (out / f"error-rank{rank}.json").write_text(json.dumps(error))
            raise
        torch.save(model.state_dict(), out / f"params-rank{rank}.pt")
        summary = {
            "rank": rank,
            "world_size": distributed.get_world_size(),
            "step": result.step,
            "first_step": result.step - len(result.step_losses) + 1,
            "step_losses": [loss.hex() for loss in result.step_losses],
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        }
        (out / f"result-rank{rank}.json").write_text(json.dumps(summary))
        distributed.finish()  # every rank done before any tears its connections down
    finally:
        distributed.cleanup()  # the error path (no-op after finish)


if __name__ == "__main__":
    main()
