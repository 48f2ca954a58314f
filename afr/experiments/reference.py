"""Regression checks of a fresh run against the committed record of a run with the same settings.

The committed records live in the project's ``results/`` (whatever ``$AFR_RESULTS`` says, so that a
test run writing to a scratch folder still compares with what is committed). Tolerances are what
holds across CPUs and thread counts: 10-fold accuracy on a few hundred pairs moves by about a point
with tiny numeric differences, AUC and EER far less.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from afr.data.benchmarks import OTHER_BUILD_HINT
from afr.paths import PROJECT_ROOT

__all__ = ["TOLERANCES", "committed_grid_rows", "committed_result", "compare_grid_with_committed",
           "compare_with_reference"]

#: metric -> largest accepted absolute difference from the committed value
TOLERANCES = {"accuracy_mean": 0.02, "auc": 0.005, "eer": 0.02}


def committed_result(tag: str, folder: str = "") -> dict[str, Any] | None:
    """The committed ``results/[<folder>/]<tag>.json`` of the project tree, or None when there is none."""
    path = PROJECT_ROOT / "results" / folder / f"{tag}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def committed_grid_rows(experiment: str, grid: str, split: str | None = "test"):
    """The rows of the committed grid ``grid`` in the project's ``results/tables/<experiment>.csv`` (those whose
    ``grid`` column names it), of ``split`` when the table has a ``split`` column; empty when there are none."""
    import pandas as pd

    path = PROJECT_ROOT / "results" / "tables" / f"{experiment}.csv"
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    if "grid" not in table:
        return table.iloc[:0]
    names = table["grid"].map(lambda cell: str(cell).split(";") if isinstance(cell, str) else [])
    chosen = table[names.map(lambda cell: grid in cell)]
    if split is not None and "split" in chosen:
        chosen = chosen[chosen["split"] == split]
    return chosen.reset_index(drop=True)


def _metric_leaves(section: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """``{"a/b": metrics}`` for every metrics dict (one holding ``auc``) in a nested ``test`` section: a record's
    test section is ``{domain: metrics}`` (one adapter) or ``{method: {domain: metrics}}`` (several)."""
    leaves: dict[str, Mapping[str, Any]] = {}
    for key, value in section.items():
        if isinstance(value, Mapping) and "auc" in value:
            leaves[prefix + key] = value
        elif isinstance(value, Mapping):
            leaves.update(_metric_leaves(value, f"{prefix}{key}/"))
    return leaves


def compare_with_reference(result: Mapping[str, Any], reference: Mapping[str, Any] | None) -> str:
    """One line saying that ``result``'s test metrics agree with ``reference``; AssertionError listing any that do not
    (a metric the reference has and the result lacks is a difference too)."""
    if reference is None:
        return "no committed result for these settings: nothing to compare with"
    measured_leaves = _metric_leaves(result.get("test") or {})
    differences, compared = [], 0
    for name, expected_metrics in _metric_leaves(reference.get("test") or {}).items():
        for metric, tolerance in TOLERANCES.items():
            expected = expected_metrics[metric]
            measured = measured_leaves.get(name, {}).get(metric)
            compared += 1
            if measured is None:
                differences.append(f"{name}/{metric}: missing (committed {expected:.4f})")
            elif abs(measured - expected) > tolerance:
                differences.append(f"{name}/{metric}: {measured:.4f} vs committed {expected:.4f} (tolerance {tolerance})")
    if differences:
        raise AssertionError("the run differs from the committed result: " + "; ".join(differences))
    return f"agrees with the committed result on all {compared} test metrics ({_limits()})"


def _limits() -> str:
    return ", ".join(f"{name} ±{value}" for name, value in TOLERANCES.items())


def compare_grid_with_committed(outcomes: Mapping[Any, Any]) -> str:
    """:func:`compare_with_reference` for every run of a grid (``{key: outcome with .record}``) that has a
    committed record under ``results/<experiment>/``; one line saying how many runs were compared."""
    compared = missing = 0
    other_build: list[str] = []
    for outcome in outcomes.values():
        record = outcome.record
        reference = committed_result(record["tag"], record["experiment"])
        if reference is None or record.get("test") is None:
            missing += 1
            continue
        try:
            compare_with_reference(record, reference)
        except AssertionError:
            packs = _packs_with_other_sha256(record, reference)
            if not packs:
                raise  # the same benchmark, another result: a regression
            other_build.append(f"{record['tag']} (packs {', '.join(packs)})")
            continue
        compared += 1
    if not compared and not other_build:
        return "no committed runs with these settings: nothing to compare with"
    line = (f"{compared} run(s) agree with their committed records on every test metric ({_limits()})"
            + (f"; {missing} without a committed record" if missing else ""))
    if other_build:  # said, never hidden: a comparison across two builds of the benchmark tests nothing
        line += (f"; {len(other_build)} run(s) differ but were scored on another build of the embedded benchmark "
                 f"than their committed records (test-pack SHA-256 differ), so they are not compared: "
                 + "; ".join(other_build) + f" — {OTHER_BUILD_HINT}")
    return line


def _packs_with_other_sha256(record: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """The test packs whose SHA-256 differs between a run's record and its committed record (flat or per k)."""
    def shas(test: Mapping[str, Any]) -> dict[str, str]:
        found = {}
        for key, value in (test or {}).items():
            if isinstance(value, Mapping) and "sha256" in value:
                found[key] = value["sha256"]
            elif isinstance(value, Mapping):
                found.update({pack: metrics["sha256"] for pack, metrics in value.items()
                              if isinstance(metrics, Mapping) and "sha256" in metrics})
        return found

    mine, theirs = shas(record.get("test")), shas(reference.get("test"))
    return sorted(pack for pack in mine.keys() & theirs.keys() if mine[pack] != theirs[pack])
