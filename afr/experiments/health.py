"""Training health: did a run fit its training data, and are its embeddings alive? Part of every result.

A run that did not fit its training data, or whose embeddings collapsed, is **not a result**: it is detected
here, flagged, shown, and never averaged into a mean or read as a finding. Everything here reads the JSON
records (no torch), so committed records are judged as they are, without retraining.

The rules are fixed in advance (before looking at which committed runs they flag); :func:`run_health` applies
them to any experiment's record:

* **not fitted** — the final epoch's ``train_margin`` (the margin loss of ``train.history``) is above
  :data:`NOT_FITTED` (0.9) × the *uniform reference*, the margin loss of uniform logits
  (:func:`uniform_margin_loss`) over the run's training identities. 0.9 is the flag: at 0.9 the classifier
  separates its identities hardly better than chance. The stricter level :data:`FITTED_WELL` (0.5) is reported
  (:attr:`Health.fitted_well`) but does not flag the first grids' runs: on the pretrained descriptor's uncentred
  embeddings (one narrow cone) no recipe reached it. The fitted recipe (centred embeddings, class-mean centres,
  :mod:`afr.experiments.recipe_search`) is required to reach it. The few-shot adaptation of notebook 05
  (``adaptation.<k>.losses``: the CosFace loss over that split's identities, plus the weighted contrastive terms
  of the methods that have them, which only raise it) is judged by the same rule.
* **collapsed** — any test accuracy (``accuracy_mean`` of a verification result anywhere under ``test`` or
  ``curves``) or the last epoch's validation accuracy (``val/<pack>/accuracy``) is at chance, ``<=``
  :data:`CHANCE` (0.55, on the balanced packs), or any such AUC is ``<= 0.55``: the embeddings no longer tell
  identities apart on that pack (e.g. every cosine equal).
* **diverged** — a meta-training history (``meta_training.history``, notebooks 04–06's starts) whose mean
  meta-loss over the last :data:`WINDOW` (5) steps is above that of the first 5 (only with at least 10 steps), or
  is at the uniform value ``s·m + ln(n_way − 1)`` (above 0.9 × the reference of :func:`uniform_margin_loss` with
  ``n_way`` classes).
* a run adapted from a recorded start whose start is flagged is flagged with it (:func:`start_of`: the record's
  ``start``, or for notebook 06's runs, whose records name none, the MAML start their settings determine).

One status per run, the most severe of its findings: ``collapsed`` > ``diverged`` > ``not fitted`` > ``ok``; every
finding is in :attr:`Health.reasons`.

The number of training identities ``C`` comes from, in order: the record's ``train.num_classes`` (written by the
recipes from now on), its ``train.identities`` (notebook 02's records), and otherwise — the older records of
notebooks 03 and 06, trained on the embedded benchmark — the embedded benchmark's training identities
(``train_identities.json`` under the run's ``embedded_root`` or ``data/processed/embedded``, 71 identities), or
:data:`EMBEDDED_TRAIN_IDENTITIES` when that folder is not on this machine. :attr:`Health.classes_source` says which.

``python -m afr.experiments.health [--results DIR]`` prints every committed record's health and the counts per
experiment; :func:`healthy_rows` drops the flagged runs' rows from a tidy table before any mean is taken.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CHANCE", "DEFAULT_M", "DEFAULT_S", "EMBEDDED_TRAIN_IDENTITIES", "FITTED_WELL", "Health", "NOT_FITTED",
           "STATUSES", "UNTRAINED_METHODS", "WINDOW", "committed_health", "flagged_runs", "healthy_records",
           "healthy_rows", "main", "run_health", "start_of", "uniform_margin_loss", "with_health"]

#: the project's margin scale and margins (:mod:`afr.losses.margin`: ``s = 64``, CosFace 0.35, ArcFace 0.5)
DEFAULT_S = 64.0
DEFAULT_M = {"cosface": 0.35, "arcface": 0.5}
#: flag "not fitted" above this fraction of the uniform-logit margin loss
NOT_FITTED = 0.9
#: the stricter level, reported only: a run below it fitted its training data well
FITTED_WELL = 0.5
#: an accuracy or AUC at or below this, on a balanced pack, is chance
CHANCE = 0.55
#: steps averaged at each end of a meta-training history
WINDOW = 5
#: the embedded benchmark's training identities (``data/processed/embedded/train_identities.json``), used for old
#: records that do not say their class count when that folder is not on this machine
EMBEDDED_TRAIN_IDENTITIES = 71
#: methods of the tidy tables that train nothing (the pretrained backbone's scores): their rows stay in a summary
#: even when the run that scored them (notebook 02 scores zero-shot and LoRA in one run) is flagged
UNTRAINED_METHODS = ("zero-shot",)
#: statuses, most severe first
STATUSES = ("collapsed", "diverged", "not fitted", "ok")


def uniform_margin_loss(margin: str = "cosface", s: float = DEFAULT_S, m: float | None = None,
                        classes: int = EMBEDDED_TRAIN_IDENTITIES) -> float:
    """The margin loss of a classifier that does not tell its ``classes`` identities apart: every cosine equal.

    * CosFace: target logit ``s(c − m)``, the others ``s·c``, whatever the common cosine ``c``:
      ``ln(1 + (C − 1)·e^{s·m}) ≈ s·m + ln(C − 1)`` (26.65 for ``s = 64``, ``m = 0.35``, ``C = 71``).
    * ArcFace depends on ``c``; the reference takes every cosine 0 (features orthogonal to every class centre,
      what a random head gives): target ``s·cos(π/2 + m) = −s·sin m``, the others 0:
      ``ln(1 + (C − 1)·e^{s·sin m})``.

    ``m`` None: the project's default for ``margin`` (:data:`DEFAULT_M`).
    """
    key = margin.strip().lower()
    if key not in DEFAULT_M:
        raise ValueError(f"unknown margin {margin!r}; available: {sorted(DEFAULT_M)}")
    if classes < 2:
        raise ValueError(f"a margin loss needs at least 2 classes, got {classes}")
    m = DEFAULT_M[key] if m is None else float(m)
    gap = s * m if key == "cosface" else s * math.sin(m)
    # ln(1 + (C-1) e^gap), stable for large gap
    return gap + math.log(classes - 1) + math.log1p(math.exp(-gap) / (classes - 1))


@dataclass
class Health:
    """A run's health (:func:`run_health`): ``status`` one of :data:`STATUSES`, why (``reasons``), and the
    numbers the rules read."""

    status: str = "ok"
    reasons: list[str] = field(default_factory=list)
    final_margin: float | None = None
    uniform_reference: float | None = None
    ratio: float | None = None
    classes: int | None = None
    classes_source: str = ""
    fitted_well: bool | None = None
    lowest_accuracy: float | None = None
    meta_loss_first: float | None = None
    meta_loss_last: float | None = None

    @property
    def flagged(self) -> bool:
        return self.status != "ok"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _flag(self, status: str, reason: str) -> None:
        self.reasons.append(reason)
        if STATUSES.index(status) < STATUSES.index(self.status):
            self.status = status


def training_classes(record: Mapping[str, Any]) -> tuple[int | None, str]:
    """``(C, where it comes from)``: the run's training identities (see the module's docstring)."""
    train = record.get("train") or {}
    for name in ("num_classes", "identities"):
        if isinstance(train.get(name), int):
            return train[name], f"record train.{name}"
    settings = record.get("settings") or {}
    if settings.get("data_profile", "embedded") != "embedded":
        return None, "not in the record"
    from afr.paths import processed_root

    root = Path(settings["embedded_root"]) if settings.get("embedded_root") else processed_root() / "embedded"
    path = root / "train_identities.json"
    if path.is_file():
        return len(json.loads(path.read_text())), f"embedded benchmark ({path.name})"
    return EMBEDDED_TRAIN_IDENTITIES, "embedded benchmark (constant EMBEDDED_TRAIN_IDENTITIES)"


def _verification_results(node: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Every verification result (a dict with ``accuracy_mean``) under ``node``, with its path."""
    if isinstance(node, Mapping):
        if "accuracy_mean" in node:
            yield "/".join(path), node
            return
        for name, child in node.items():
            yield from _verification_results(child, (*path, str(name)))


def _check_fit(health: Health, final: float, classes: int | None, margin: str, s: float, m: float | None,
               what: str) -> None:
    if classes is None:
        health.reasons.append(f"{what}: training identities unknown, fit not judged")
        return
    reference = uniform_margin_loss(margin, s, m, classes)
    ratio = final / reference
    if health.ratio is None or ratio > health.ratio:
        health.final_margin, health.uniform_reference, health.ratio = final, reference, ratio
        health.fitted_well = ratio <= FITTED_WELL
    if ratio > NOT_FITTED:
        health._flag("not fitted", f"{what} {final:.2f} = {ratio:.2f} x uniform-logit {reference:.2f} "
                                   f"({margin}, C={classes})")


def start_of(record: Mapping[str, Any]) -> str | None:
    """The tag of the recorded start ``record``'s run was adapted from, or None: its ``start`` (notebooks 04/05), or
    for a notebook 06 run with a MAML start (``settings.maml_start``), whose record names none, the start its
    settings determine (:attr:`~afr.experiments.settings.ablations.AblationSettings.start_tag`; a setting added
    after the record was written takes the value such runs had)."""
    start = record.get("start")
    if isinstance(start, str):
        return start
    settings = record.get("settings")
    if record.get("experiment") != "ablations" or record.get("method") == "maml-start" \
            or not isinstance(settings, Mapping) or not settings.get("maml_start"):
        return None
    from afr.experiments.settings.ablations import AblationSettings

    return AblationSettings.from_mapping({**AblationSettings.unrecorded_values(), **settings}).start_tag


def run_health(record: Mapping[str, Any], starts: Mapping[str, Health] | None = None) -> Health:
    """The health of one run's record, by the rules of this module's docstring (fixed in advance).

    ``starts``: the health of recorded starts by tag, for runs adapted from one (``record["start"]``).
    """
    health = Health()
    settings = record.get("settings") or {}
    margin = str(settings.get("margin") or "cosface")
    s = float(settings.get("s") or DEFAULT_S)
    m = settings.get("m")
    history = (record.get("train") or {}).get("history") or []
    classes, source = training_classes(record) if history else (None, "")
    health.classes, health.classes_source = classes, source
    # not fitted: the final epoch's margin loss
    if history and history[-1].get("train_margin") is not None:
        _check_fit(health, float(history[-1]["train_margin"]), classes, margin, s, m, "final train_margin")
    for shots, part in (record.get("adaptation") or {}).items():
        if isinstance(part, Mapping) and part.get("losses") and isinstance(part.get("identities"), int):
            if health.classes is None:
                health.classes, health.classes_source = part["identities"], "record adaptation.identities"
            _check_fit(health, float(part["losses"][-1]), part["identities"], "cosface", DEFAULT_S, None,
                       f"adaptation {shots} final loss")
    # collapsed: a test or last-epoch validation metric at chance
    lows = []
    for name in ("test", "curves"):
        for where, result in _verification_results(record.get(name), (name,)):
            for metric in ("accuracy_mean", "auc"):
                value = result.get(metric)
                if isinstance(value, (int, float)) and value <= CHANCE:
                    lows.append((float(value), f"{where} {metric.replace('_mean', '')} {value:.3f}"))
    if history:
        for name, value in history[-1].items():
            if name.startswith("val/") and name.endswith(("/accuracy", "/auc")) and isinstance(value, (int, float)) \
                    and value <= CHANCE:
                lows.append((float(value), f"last-epoch {name} {value:.3f}"))
    accuracies = [float(r["accuracy_mean"]) for n in ("test", "curves")
                  for _, r in _verification_results(record.get(n)) if isinstance(r.get("accuracy_mean"), (int, float))]
    health.lowest_accuracy = min(accuracies) if accuracies else None
    if lows:
        shown = ", ".join(text for _, text in sorted(lows)[:3]) + (f" (+{len(lows) - 3} more)" if len(lows) > 3 else "")
        health._flag("collapsed", f"at chance (<= {CHANCE}): {shown}")
    # diverged: the meta-loss rose, or sits at its uniform value
    meta = [float(step["meta_loss"]) for step in (record.get("meta_training") or {}).get("history") or []
            if step.get("meta_loss") is not None]
    if meta:
        first, last = sum(meta[:WINDOW]) / len(meta[:WINDOW]), sum(meta[-WINDOW:]) / len(meta[-WINDOW:])
        health.meta_loss_first, health.meta_loss_last = first, last
        n_way = int(settings.get("n_way") or 5)
        reference = uniform_margin_loss("cosface", DEFAULT_S, None, n_way)
        if len(meta) >= 2 * WINDOW and last > first:
            health._flag("diverged", f"meta-loss rose: last {WINDOW} steps {last:.2f} > first {WINDOW} {first:.2f}")
        if last > NOT_FITTED * reference:
            health._flag("diverged", f"meta-loss {last:.2f} at its uniform value {reference:.2f} (n_way={n_way})")
    start = start_of(record)
    if starts and start is not None and start in starts and starts[start].flagged:
        health._flag(starts[start].status, f"its start {start} is {starts[start].status}")
    return health


# ---------------------------------------------------------------------------------------------- committed results
def _record_files(results: Path) -> Iterable[Path]:
    for path in sorted(results.rglob("*.json")):
        if "adapters" in path.relative_to(results).parts or "analysis" in path.relative_to(results).parts:
            continue
        yield path


def committed_health(results: str | Path | None = None) -> dict[str, tuple[dict[str, Any], Health]]:
    """``{tag: (record summary, Health)}`` for every run record under ``results`` (default: the results folder);
    the summary holds ``experiment``, ``tag``, ``method``, ``seed``. Starts are judged before the runs that use
    them."""
    from afr.paths import results_root

    root = Path(results) if results is not None else results_root()
    records = {}
    for path in _record_files(root):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "tag" in record and "experiment" in record:
            records[record["tag"]] = record
    judged: dict[str, Health] = {}
    for tag, record in records.items():
        if start_of(record) is None:
            judged[tag] = run_health(record)
    for tag, record in records.items():
        if tag not in judged:
            judged[tag] = run_health(record, judged)
    return {tag: ({name: records[tag].get(name) for name in ("experiment", "tag", "method", "seed")}, judged[tag])
            for tag in records}


def flagged_runs(results: str | Path | None = None) -> dict[str, Health]:
    """``{tag: Health}`` of the flagged runs under ``results``."""
    return {tag: health for tag, (_, health) in committed_health(results).items() if health.flagged}


_FLAGGED_CACHE: dict[tuple[str, float], dict[str, Health]] = {}


def _cached_flagged(results: str | Path | None) -> dict[str, Health]:
    from afr.paths import results_root

    root = Path(results) if results is not None else results_root()
    stamp = max((path.stat().st_mtime for path in _record_files(root)), default=0.0) if root.is_dir() else 0.0
    key = (str(root.resolve()), stamp)
    if key not in _FLAGGED_CACHE:
        _FLAGGED_CACHE[key] = flagged_runs(root) if root.is_dir() else {}
    return _FLAGGED_CACHE[key]


def with_health(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """``record`` with its :func:`run_health` under ``health`` (what the recipes' records store from now on; the
    tidy tables get no column). A dict is completed in place (the caller's record has it too); a record that has a
    ``health`` already is returned as it is."""
    if not isinstance(record, Mapping) or "health" in record:
        return record
    health = run_health(record).to_dict()
    if isinstance(record, dict):
        record["health"] = health
        return record
    return {**record, "health": health}


def healthy_rows(table, results: str | Path | None = None, flagged: Mapping[str, Health] | None = None,
                 report: bool = False):
    """``table`` (a tidy table, column ``run`` = the record's tag) without the rows of flagged runs — the one place
    where flagged runs are kept out of every mean. ``flagged``: the flagged runs (default: :func:`flagged_runs` of
    ``results``, the results folder by default). With ``report``, returns ``(rows, {tag: Health} of the runs
    excluded from this table)``. Rows of :data:`UNTRAINED_METHODS` are kept (they do not depend on training)."""
    flagged = _cached_flagged(results) if flagged is None else flagged
    if len(table) and "run" in table:
        trained = ~table["method"].isin(UNTRAINED_METHODS) if "method" in table else True
        drop = table["run"].isin(set(flagged)) & trained
        excluded_tags = sorted(set(table.loc[drop, "run"]))
        kept = table[~drop]
    else:
        excluded_tags, kept = [], table
    if report:
        return kept, {tag: flagged[tag] for tag in excluded_tags}
    return kept


def healthy_records(records: Mapping[Any, Any], show: bool = True) -> tuple[dict[Any, Any], dict[str, Health]]:
    """``(kept, excluded)``: ``records`` (``{key: record}``, or ``{key: outcome}`` with a ``.record``) without the
    flagged runs' (:func:`run_health`; a run adapted from a start among ``records`` inherits the start's flag), and
    ``{tag: Health}`` of those left out. With ``show``, prints :func:`excluded_note` (a line per flagged run): what
    the notebooks' grid tables use, so that no summary or test of theirs averages a flagged run."""
    def record_of(item: Any) -> Mapping[str, Any]:
        return getattr(item, "record", item)

    # each record judged once: the runs without a recorded start first, then those adapted from one
    judged = {key: run_health(record_of(item)) for key, item in records.items() if start_of(record_of(item)) is None}
    starts = {record_of(records[key]).get("tag"): health for key, health in judged.items()}
    kept, excluded = {}, {}
    for key, item in records.items():
        record = record_of(item)
        health = judged[key] if key in judged else run_health(record, starts)
        if health.flagged:
            excluded[str(record.get("tag", key))] = health
        else:
            kept[key] = item
    if show and excluded:
        print(excluded_note(excluded))
    return kept, excluded


def excluded_note(excluded: Mapping[str, Health], starts: Mapping[str, Health] | None = None) -> str:
    """A line per run excluded from a summary (for the notebooks), or an empty string. ``starts``: flagged starts
    that are no rows of the summary but whose runs were left out with them, listed apart after the runs."""
    lines = []
    if excluded:
        lines.append(f"{len(excluded)} flagged run(s) excluded from the means (afr.experiments.health):")
        lines += [f"  {tag}: {health.status} — {health.reason}" for tag, health in sorted(excluded.items())]
    if starts:
        lines.append(f"{len(starts)} flagged start(s), in no mean themselves; a run adapted from one is flagged with it:")
        lines += [f"  {tag}: {health.status} — {health.reason}" for tag, health in sorted(starts.items())]
    return "\n".join(lines)


def health_table(results: str | Path | None = None):
    """A DataFrame (experiment, tag, method, seed, status, reason, ratio) of every record under ``results``."""
    import pandas as pd

    rows = [{**summary, "status": health.status, "reason": health.reason,
             "ratio": None if health.ratio is None else round(health.ratio, 3)}
            for summary, health in committed_health(results).values()]
    return pd.DataFrame(rows, columns=["experiment", "tag", "method", "seed", "status", "reason", "ratio"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afr.experiments.health", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=None, help="a results/ folder (default: the project's)")
    parser.add_argument("--flagged", action="store_true", help="list only the flagged runs")
    args = parser.parse_args(argv)
    table = health_table(args.results)
    shown = table[table["status"] != "ok"] if args.flagged else table
    with_pandas_width = shown.sort_values(["experiment", "tag"])
    for row in with_pandas_width.itertuples(index=False):
        print(f"{row.experiment:<12} {row.tag:<58} {str(row.method):<28} {str(row.seed):<4} {row.status:<10} "
              f"{row.reason}")
    print()
    counts = table.groupby(["experiment", "status"]).size().unstack(fill_value=0)
    counts["total"] = counts.sum(axis=1)
    print(counts.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
