"""Adaptation curves: one model scored after several step counts of an adaptation, for several k."""
from __future__ import annotations

from typing import Any, Callable


class StartScore:
    """The start's (0 steps) metrics of one run's adaptation curves, scored once.

    Every k of a run adapts the same start, so its score at 0 steps is the same for all of them. ``at(steps, score)``
    calls ``score()`` for every step count but 0; at 0 it calls it the first time only and afterwards returns a copy
    of those metrics."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] | None = None

    def at(self, steps: int, score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if steps != 0:
            return score()
        if self.metrics is None:
            self.metrics = score()
        return dict(self.metrics)
