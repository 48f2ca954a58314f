"""Learning-rate schedule: linear warm-up, then cosine decay to a floor, stepped once per optimizer step."""
from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each optimizer step (0-based).

    Steps ``0 .. warmup_steps-1`` ramp linearly ``1/w, 2/w, .., 1`` (no step is wasted at lr 0);
    from step ``warmup_steps`` the factor follows a half cosine from 1 towards ``min_ratio``, which
    it reaches at ``total_steps`` (the value after the last step) and holds afterwards.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine_factor` to every parameter group.

    ``min_lr`` is relative to ``base_lr``: a group whose own learning rate differs from ``base_lr``
    decays to ``group_lr * min_lr / base_lr``. Call ``scheduler.step()`` after each optimizer step.
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    return LambdaLR(optimizer, warmup_cosine_factor(warmup_steps, total_steps, min_lr / base_lr))
