"""Statistics over seeds, shared by the experiments (notebooks 03–06) and the paper (:mod:`afr.paper.stats`):
mean ± sd over seeds (:func:`seed_stats`), a paired t-test of two ``{seed: value}`` series (:func:`paired_test`), and
that test over a long table, per group of rows (:func:`paired_tests`).

With three seeds a paired t-test has two degrees of freedom: it can only flag large, consistent gaps. The sd is the
sample standard deviation (ddof = 1), as pandas and the notebooks compute it. No torch here: scipy and pandas are
imported when used.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Note", "PairedTest", "SeedStats", "paired_test", "paired_tests", "seed_stats", "shown_paired_tests"]


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


def paired_test(a, b, undefined_when_constant: bool = True) -> PairedTest:
    """Paired t-test (``scipy.stats.ttest_rel``) of two ``{seed: value}`` pandas series on their common seeds.

    ``undefined_when_constant`` (the paper's reading): differences equal at every seed give p = NaN, the t statistic
    being undefined; otherwise p is scipy's for them (NaN for all-zero differences, about 0 for a constant non-zero
    one).
    """
    from scipy.stats import ttest_rel

    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return PairedTest(math.nan, math.nan, 0)
    first, second = a[seeds].to_numpy(float), b[seeds].to_numpy(float)
    diff = float((first - second).mean())
    if len(seeds) < 2 or (undefined_when_constant and np.allclose(first - second, (first - second)[0])):
        p = math.nan
    else:
        p = float(ttest_rel(first, second).pvalue)
    return PairedTest(diff, p, len(seeds))


def paired_tests(table, against: str, metric: str = "auc", by: Sequence[str] = ("domain",), *,
                 exclude: Sequence[str] = (), sort: bool = True, undefined_when_constant: bool = False):
    """Paired t-tests over seeds of the method ``against`` vs every other method of a long table (columns
    ``method, seed, metric, value`` and the ``by`` columns), one per group of rows with equal ``by`` values.

    Rows: ``comparison`` (``"<against> - <method>"``), the ``by`` columns, ``metric``, ``seeds`` (how many are
    paired), ``mean_difference``, ``p_value``; methods in table order, then groups (sorted with ``sort``, else in
    table order). ``exclude``: methods not tested (e.g. ``zero-shot``). ``undefined_when_constant``: as
    :func:`paired_test` (off: scipy's p-value as it comes, what the notebooks print).
    """
    import pandas as pd

    by = list(by)
    chosen = table[table["metric"] == metric]
    rows = []
    for method in [m for m in chosen["method"].unique() if m != against and m not in exclude]:
        for key, group in chosen.groupby(by, sort=sort):
            key = key if isinstance(key, tuple) else (key,)
            test = paired_test(group[group["method"] == against].set_index("seed")["value"],
                               group[group["method"] == method].set_index("seed")["value"], undefined_when_constant)
            rows.append({"comparison": f"{against} - {method}", **dict(zip(by, key)), "metric": metric,
                         "seeds": test.n, "mean_difference": test.diff, "p_value": test.p})
    return pd.DataFrame(rows)


class Note(str):
    """A sentence that a notebook cell shows as plain text (its ``repr`` has no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def shown_paired_tests(tests, decimals: int = 4, hint: str = "set seeds = (0, 1, 2) to test"):
    """What a notebook shows for a table of :func:`paired_tests`: the table (rounded) when some comparison pairs at
    least two seeds, else one sentence saying that a paired test needs two seeds (instead of a wall of NaN
    p-values); ``hint`` says where tests are (e.g. the committed 3-seed grid)."""
    seeds = int(tests["seeds"].max()) if len(tests) else 0
    if seeds < 2:
        return Note(f"no paired test: a paired t-test needs at least 2 seeds per method and this run has {seeds}; "
                    + hint)
    return tests.round(decimals)
