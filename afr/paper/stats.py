"""The two statistics the paper uses: mean ± sd over seeds, and a paired t-test over seeds (scipy), both from
:mod:`afr.stats` (shared with the experiments), and how they are written to the paper's number book.

With three seeds a paired t-test has two degrees of freedom: it can only flag large, consistent gaps, and the
text says so. The sd is the sample standard deviation (ddof = 1), as pandas and the notebooks compute it.
"""
from __future__ import annotations

import math

from afr.paper.numbers import NumberBook
from afr.stats import PairedTest, SeedStats, paired_test, seed_stats  # re-exported: defined in afr.stats

__all__ = ["PairedTest", "SeedStats", "paired_test", "record_stats", "record_test", "seed_stats"]


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
