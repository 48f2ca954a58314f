"""A seconds-long training run on synthetic data, to check an installation or a torchrun setup.

    python -m afr.train.smoke --output-dir /tmp/afr-smoke
    torchrun --standalone --nproc_per_node=2 -m afr.train.smoke --output-dir /tmp/afr-smoke-ddp

It trains :class:`TinyClassifier` on :class:`SyntheticFaces` with the real :class:`Trainer`
(DDP, checkpoints, metrics) and prints, on every rank, the final loss and a parameter checksum
(identical on all ranks when DDP works). The two classes are also the tests' tiny fixtures.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from afr.train import distributed
from afr.train.config import TrainConfig
from afr.train.engine import Trainer


@dataclass
class TinyOutput:
    """What :class:`TinyClassifier` returns: ``loss`` (when labels are given) and ``logits``; ``terms``
    (named parts of the loss, logged by the engine) stays empty for it but lets test models report some."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class TinyClassifier(nn.Module):
    """Average-pool to 4x4, then a 2-layer MLP with dropout; cross-entropy loss.

    Follows the engine's call convention ``model(images=, labels=, **extra) -> .loss``.
    """

    def __init__(self, num_classes: int = 4, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * 4 * 4, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, **extra: torch.Tensor) -> TinyOutput:
        logits = self.net(F.adaptive_avg_pool2d(images, 4))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return TinyOutput(loss=loss, logits=logits)


class SyntheticFaces(Dataset):
    """``size`` fixed random ``side x side`` uint8 RGB images; class ``c`` brightens a class-specific
    quadrant/channel so a tiny model can learn it. Samples are ``(image, label[, domain])``."""

    def __init__(self, size: int = 64, num_classes: int = 4, side: int = 16, seed: int = 0, domains: bool = False):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(size) % num_classes
        images = rng.integers(0, 128, size=(size, side, side, 3), dtype=np.uint8)
        half = side // 2
        for index, label in enumerate(self.labels):
            row, col = divmod(int(label) % 4, 2)
            images[index, row * half : (row + 1) * half, col * half : (col + 1) * half, int(label) % 3] += 120
        self.images = images
        self.domains = domains

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple:
        sample = (self.images[index], int(self.labels[index]))
        return sample + (index % 2,) if self.domains else sample


def parameter_checksum(model: nn.Module) -> float:
    """Sum of all parameters as float64 (equal across DDP ranks after any step)."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output-dir")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = TinyClassifier()
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        output_dir=args.output_dir,
        device=args.device,
        overwrite=args.overwrite,
        log_every=1,
        progress=False,
    )
    trainer = Trainer(model, SyntheticFaces(args.samples), config)
    try:
        result = trainer.fit()
        rank, world = distributed.get_rank(), distributed.get_world_size()
        print(
            f"rank {rank}/{world} device {trainer.device} precision {trainer.precision}: step {result.step}, "
            f"final loss {result.step_losses[-1]:.4f}, parameter checksum {parameter_checksum(model):.10f}",
            flush=True,
        )
        distributed.finish()
    finally:
        distributed.cleanup()  # the error path (no-op after finish)


if __name__ == "__main__":
    main()
