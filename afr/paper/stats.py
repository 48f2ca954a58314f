"""The two statistics the paper uses: mean ± sd over seeds, and a paired t-test over seeds (scipy).

With three seeds a paired t-test has two degrees of freedom: it can only flag large, consistent gaps, and the
text says so. The sd is the sample standard deviation (ddof = 1), as pandas and the notebooks compute it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from afr.paper.numbers import NumberBook

__all__ = ["PairedTest", "SeedStats", "paired_test", "record_stats", "record_test", "seed_stats"]


@dataclass(frozen=True)
class SeedStats:
    mean: float
    sd: float  # NaN with one seed
    n: int


@dataclass(frozen=True)
class PairedTest:
    diff: float  # mean over seeds of (a - b)
    p: float  # two-sided p-value of scipy.stats.ttest_rel; NaN with fewer than two seeds
    n: int


def seed_stats(values) -> SeedStats:
    """Mean and sample sd of one value per seed."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return SeedStats(math.nan, math.nan, 0)
    return SeedStats(float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan, int(array.size))


def paired_test(a, b) -> PairedTest:
    """Paired t-test of two ``{seed: value}`` series on their common seeds."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return PairedTest(math.nan, math.nan, 0)
    first, second = a[seeds].to_numpy(float), b[seeds].to_numpy(float)
    diff = float((first - second).mean())
    if len(seeds) < 2 or np.allclose(first - second, (first - second)[0]):
        p = math.nan  # constant differences: the t statistic is undefined
    else:
        p = float(ttest_rel(first, second).pvalue)
    return PairedTest(diff, p, len(seeds))


def record_stats(book: NumberBook, prefix: str, stats: SeedStats, kind: str) -> str:
    """Write ``<prefix>.mean``, ``.sd`` (two seeds or more) and ``.n``; return the table cell ``mean ± sd``."""
    mean = book.add(f"{prefix}.mean", stats.mean, kind)
    book.add(f"{prefix}.n", stats.n, "count")
    if stats.n < 2 or math.isnan(stats.sd):
        return mean
    sd = book.add(f"{prefix}.sd", stats.sd, kind if kind != "points" else "accuracy")
    return rf"{mean} $\pm$ {sd}"


def record_test(book: NumberBook, prefix: str, test: PairedTest, kind: str) -> None:
    """Write ``<prefix>.diff`` (``kind``: ``delta`` for AUC, ``points`` for accuracy), ``.p`` and ``.n``."""
    book.add(f"{prefix}.diff", test.diff, kind)
    book.add(f"{prefix}.p", test.p, "p")
    book.add(f"{prefix}.n", test.n, "count")
