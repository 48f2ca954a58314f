"""Helpers the parts share: keys, display names, cells of mean ± sd over seeds."""
from __future__ import annotations

from dataclasses import dataclass, field

from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook, key_part
from afr.paper.stats import record_stats, seed_stats

__all__ = ["DOMAIN_LABELS", "KIND_OF_METRIC", "PartOutput", "key", "label", "seed_span", "stats_cell", "unseeded"]

DOMAIN_LABELS = {"controlled": "controlled", "wild": "wild", "thermal": "thermal (mixed)", "lowquality": "low quality",
                 "thermal_und": "thermal UND", "thermal_puj": "thermal PUJ"}
#: how each metric of the tables is formatted (accuracies are fractions in the tables, per cent in the paper)
KIND_OF_METRIC = {"auc": "auc", "accuracy": "accuracy", "accuracy_std": "accuracy", "eer": "eer"}


@dataclass
class PartOutput:
    """A part's tables for the paper (``tables/<name>.tex``) and for the supplement (``supplementary/<name>.tex``)."""

    tables: dict[str, Table] = field(default_factory=dict)
    supplementary: dict[str, Table] = field(default_factory=dict)


def key(*parts: object) -> str:
    """A dotted result key from its components (each made safe by :func:`~afr.paper.numbers.key_part`)."""
    return ".".join(key_part(part) for part in parts)


def label(name: object) -> str:
    """A domain's or method's display name, escaped for LaTeX."""
    return escape(DOMAIN_LABELS.get(str(name), str(name)))


def meta_training_costs(book: NumberBook, prefix: str, records) -> dict[str, list[float]]:
    """Meta-training seconds per outer step per method (``records``: ``{(method, seed): record}``, flagged runs
    included: a measured cost), written as ``<prefix>.cost.<method>.seconds-per-step``; returns the values."""
    seconds: dict[str, list[float]] = {}
    for (method, _), record in records.items():
        if (record.get("meta_training") or {}).get("seconds_per_step"):
            seconds.setdefault(method, []).append(record["meta_training"]["seconds_per_step"])
    for method, values in seconds.items():
        stats_cell(book, key(prefix, "cost", method, "seconds-per-step"), values, "seconds")
    return seconds


def stats_cell(book: NumberBook, prefix: str, values, kind: str) -> str:
    """Record the mean ± sd over seeds of ``values`` under ``prefix`` and return the cell (``not run`` if empty)."""
    values = list(values)
    if not values:
        return NOT_RUN
    return record_stats(book, prefix, seed_stats(values), kind)


def unseeded(values):
    """The zero-shot backbone has no seed: the tables repeat its one value per seed. Keep one copy (so no
    "± 0" is printed as if it were a spread) — but only when the copies really are equal."""
    return values.iloc[:1] if len(values) and (values == values.iloc[0]).all() else values


def seed_span(seeds) -> str:
    """The seeds of a table as its caption names them: ``seeds 0--4`` for a run of consecutive seeds, else listed."""
    seeds = sorted({int(seed) for seed in seeds})
    if not seeds:
        return "no seed"
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}--{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))
