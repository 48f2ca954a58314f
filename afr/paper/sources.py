"""What the paper reads: the committed tables and records of ``results/``, and which of their runs it reports.

The tables hold every run ever recorded (demo runs, searches, earlier budgets). The paper reports the
**committed grids** — the settings of ``make baseline-search``, ``make dalora-results``, ``make maml-results`` and
``make crossdomain-results`` (:class:`~afr.experiments.grids.CommittedGrids` mirrors the Makefile; a test checks
that they agree) — and finds their rows by run tag, computed from those settings exactly as the experiments name
their runs. Nothing here trains or scores anything; a run of a grid that is not recorded simply has no rows (its
cells read "not run").

DA-LoRA's learning rate is chosen per adapter family on the validation packs (notebook 03's rule,
:func:`afr.experiments.dalora_vs_lora.choose_learning_rates`): :func:`dalora_learning_rates` applies the same rule to the
validation rows of the search runs in the table.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from afr.analysis.committed import RECORD_FOLDERS, full_profile_rows
from afr.experiments.settings.dalora import FAMILY_REPRESENTATIVE
from afr.experiments.grids import CommittedGrids
from afr.paths import MissingResourceError

__all__ = ["EXPERIMENT_TABLES", "PaperSources", "load_sources"]

#: the tables the paper reads (``results/tables/<name>.csv``); ``ablations`` may be absent
EXPERIMENT_TABLES = ("baseline", "dalora", "maml", "crossdomain", "ablations")
#: the columns of an absent table (an empty frame): those every part may select on, so that a results folder
#: without an experiment's table (e.g. only full-profile baseline runs) gives "not run" cells, not a KeyError
ABSENT_TABLE_COLUMNS = ["experiment", "run", "method", "domain", "metric", "seed", "value", "split", "grid",
                        "data_profile", "backbone", "target", "source", "shots", "steps", "meta_steps", "epochs", "lr",
                        "score_test", "group", "cell"]


@dataclass
class PaperSources:
    """The committed results under ``root`` (a ``results/`` folder) and the grids the paper reports."""

    root: Path
    grids: CommittedGrids = field(default_factory=CommittedGrids)
    #: ``{table: {tag: Health}}``: the flagged runs (:mod:`afr.experiments.health`) that the paper's rows and records
    #: left out, filled in as the parts read them
    excluded: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ training health
    @cached_property
    def flagged(self) -> dict[str, Any]:
        """``{tag: Health}`` of the flagged runs under ``root``: they are in no mean of the paper."""
        from afr.experiments.health import flagged_runs

        return flagged_runs(self.root)

    def healthy(self, table: str, frame):
        """``frame`` (rows of ``tables/<table>.csv``) without the flagged runs' rows, noting which were left out."""
        from afr.experiments.health import healthy_rows

        kept, excluded = healthy_rows(frame, flagged=self.flagged, report=True)
        self.excluded.setdefault(table, {}).update(excluded)
        return kept

    def healthy_record(self, table: str, tag: str, record: dict[str, Any] | None) -> dict[str, Any] | None:
        """``record`` unless its run is flagged (then None, noted in :attr:`excluded`)."""
        if record is not None and tag in self.flagged:
            self.excluded.setdefault(table, {})[tag] = self.flagged[tag]
            return None
        return record

    # ------------------------------------------------------------------------------------------ raw files
    @cached_property
    def tables(self) -> dict[str, Any]:
        """``{name: DataFrame}`` of ``tables/<name>.csv``; an absent table is an empty frame."""
        import pandas as pd

        tables = {}
        for name in EXPERIMENT_TABLES:
            path = self.root / "tables" / f"{name}.csv"
            tables[name] = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=ABSENT_TABLE_COLUMNS)
        return tables

    @property
    def has_ablations(self) -> bool:
        return len(self.tables["ablations"]) > 0

    @cached_property
    def embedded_stats(self) -> dict[str, Any] | None:
        path = self.root / "embedded_stats.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def analysis(self) -> dict[str, dict[str, Any]]:
        """``{stem: flat dict}`` of ``analysis/*.json`` (notebook 07's numbers), when present."""
        folder = self.root / "analysis"
        return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))} if folder.is_dir() \
            else {}

    @cached_property
    def crossdomain_lr_check(self) -> list[dict[str, Any]]:
        """The summaries of notebook 05's stage-2 learning-rate check (``analysis/crossdomain_lr/*.json``,
        :mod:`afr.experiments.crossdomain_lr_check`: validation curves only), when present."""
        folder = self.root / "analysis" / "crossdomain_lr"
        return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    def every_record(self, folder: str, tags: dict) -> dict:
        """``{key: record}`` of every run of ``tags`` (``{key: tag}``) that has a record, **flagged ones included**:
        a flagged run is no result, but what it cost was measured (the meta-training seconds per step)."""
        return {key_: record for key_, tag in tags.items() if (record := self.record(folder, tag)) is not None}

    def record(self, folder: str, tag: str) -> dict[str, Any] | None:
        """The JSON record ``<root>/<folder>/<tag>.json`` (``folder`` may be ``""``), or None if absent."""
        path = self.root / folder / f"{tag}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _rows(self, table: str, tags: Iterable[str], split: str = "test"):
        frame = self.tables[table]
        return self.healthy(table, frame[frame["run"].isin(set(tags)) & (frame["split"] == split)].copy())

    # ------------------------------------------------------------------------------------------ full profile
    def full_profile_test(self, table: str, from_records: Iterable[str] = ("num_identities",)):
        """Test rows of ``tables/<table>.csv`` from full-profile runs (CASIA-WebFace, the five InsightFace packs),
        with the column ``data_profile`` and the settings ``from_records`` filled in from the table or, where it
        lacks the column, the run's record (:func:`afr.analysis.committed.full_profile_rows`, as notebook 07)."""
        return full_profile_rows(self.healthy(table, self.tables[table]), self.root / RECORD_FOLDERS[table],
                                 tuple(from_records))

    # ------------------------------------------------------------------------------------------ baseline (02)
    @property
    def baseline_tag(self) -> str:
        return self.grids.baseline.tag

    def baseline_test(self):
        """Test rows of notebook 02's recorded run (methods ``zero-shot`` and ``lora``; one seed)."""
        return self._rows("baseline", [self.baseline_tag])

    def baseline_search(self):
        """Validation AUC of the last epoch per (head_init, lr, seed, domain): the search runs' ``val`` rows."""
        tags = self.grids.baseline_search_tags()
        rows = self._rows("baseline", tags, split="val")
        rows = rows[rows["metric"] == "auc"]
        rows["candidate"] = rows["run"].map(tags)
        return rows

    # ------------------------------------------------------------------------------------------ DA-LoRA (03)
    def dalora_search(self):
        """Mean validation AUC (last epoch, over the validation packs) of each family's representative run at
        each searched learning rate, first seed — notebook 03's choice table."""
        import pandas as pd

        grid = self.grids.dalora
        rows = []
        for lr in grid.search_lrs:
            for name, method in FAMILY_REPRESENTATIVE.items():
                tag = grid.for_run(method, grid.seeds[0], lr=lr, score_test=False).tag
                val = self._rows("dalora", [tag], split="val")
                val = val[val["metric"] == "auc"]
                if len(val):
                    rows.append({"family": name, "method": method, "lr": lr, "val_auc_mean": float(val["value"].mean()),
                                 **{f"val_auc_{d}": v for d, v in zip(val["domain"], val["value"])}})
        return pd.DataFrame(rows)

    def dalora_learning_rates(self) -> dict[str, float]:
        """``{family: lr}`` with the highest mean validation AUC (the grid's ``lr`` when nothing was searched)."""
        return self.grids.dalora_learning_rates(self.tables["dalora"])

    def dalora_tags(self) -> dict[tuple[str, int], str]:
        return self.grids.dalora_tags(self.tables["dalora"])

    def dalora_test(self):
        """Test rows of the grid (every method x seed) and of the zero-shot backbone (one row per seed)."""
        import pandas as pd

        zero_tag = self.grids.dalora_zero_shot_tag()
        trained = self._rows("dalora", self.dalora_tags().values())
        zero = self._rows("dalora", [zero_tag])
        zero = zero[zero["method"] == "zero-shot"]
        return pd.concat([zero, trained], ignore_index=True)

    def dalora_records(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {key: record for key, tag in self.dalora_tags().items()
                if (record := self.healthy_record("dalora", tag, self.record("dalora", tag))) is not None}

    # ------------------------------------------------------------------------------------------ MAML (04)
    def maml_tags(self, grid=None) -> dict[tuple[str, int], str]:
        """Every (start, seed) run of notebook 04's reported grid (``grid``: another, e.g. ``grids.maml_clipped``)."""
        return self.grids.maml_tags(grid)

    def maml_test(self, grid=None):
        """Test rows of every (start, seed) of the grid: one per k, at the step count its validation curve chose
        (columns ``shots``, ``steps``)."""
        return self._rows("maml", self.maml_tags(grid).values())

    def maml_validation(self, grid=None):
        """Validation curve rows (columns ``shots``, ``steps``) of every (start, seed) of the grid, ``zero-shot``
        (the random start at step 0) included."""
        return self._rows("maml", self.maml_tags(grid).values(), split="val")

    def maml_zero_shot_test(self):
        """The zero-shot backbone's test rows on notebook 04's target: the first grid's random start at step 0
        (the same model and pack; the grids that choose their step count score the test pack only there)."""
        rows = self._rows("maml", self.grids.maml_tags(self.grids.maml_first).values())
        return rows[(rows["method"] == "zero-shot") & (rows["steps"] == 0)]

    def maml_records(self, grid=None) -> dict[tuple[str, int], dict[str, Any]]:
        return {key: record for key, tag in self.maml_tags(grid).items()
                if (record := self.healthy_record("maml", tag, self.record("maml", tag))) is not None}

    # ------------------------------------------------------------------------------------------ cross-domain (05)
    def crossdomain_tags(self, grid: str = "thermal") -> dict[tuple[str, int], str]:
        """Every run of the grid named ``grid`` (:meth:`~afr.experiments.grids.CommittedGrids.crossdomain_tags`)."""
        return self.grids.crossdomain_tags(grid)

    def crossdomain_test(self, *grids: str):
        """Test rows of the runs of ``grids`` (default: ``thermal``), a run shared by two grids once: ``shots`` 0 for
        zero-shot and the starts, -1 (:data:`~afr.experiments.crossdomain.ALL_SHOTS`) for k = all; one row per
        (method, seed, k, pack, metric)."""
        return self._rows("crossdomain", {tag for grid in grids or ("thermal",)
                                          for tag in self.crossdomain_tags(grid).values()})

    def crossdomain_records(self, grid: str = "thermal") -> dict[tuple[str, int], dict[str, Any]]:
        return {key: record for key, tag in self.crossdomain_tags(grid).items()
                if (record := self.healthy_record("crossdomain", tag, self.record("crossdomain", tag))) is not None}

    # ------------------------------------------------------------------------------------------ ablations (06)
    def fitted_ablation_groups(self) -> tuple[str, ...]:
        """The groups of notebook 06 whose reported rows are the fitted grid's."""
        return self.grids.fitted_ablation_groups(self.tables["ablations"])

    def ablations_test(self, healthy: bool = True):
        """Test rows of the reported runs in ``tables/ablations.csv`` (columns ``group`` and ``cell`` say which
        ablation), if any: each group from the fitted grid once it has run, else from the first grid
        (:meth:`~afr.experiments.grids.CommittedGrids.reported_ablation_runs`); the demo's runs with a shorter MAML
        start are neither's. ``healthy``: without the flagged runs' rows (False: all, for the table's layout only)."""
        frame = self.tables["ablations"]
        if len(frame):
            frame = self.grids.reported_ablation_rows(frame)
            frame = self.healthy("ablations", frame) if healthy else frame
        if not len(frame):
            return frame
        return frame[frame["split"] == "test"].copy() if "split" in frame else frame.copy()


def load_sources(results: str | Path, grids: CommittedGrids | None = None) -> PaperSources:
    """The committed results under ``results``; a missing folder is an error naming it."""
    root = Path(results).expanduser().resolve()
    if not root.is_dir():
        raise MissingResourceError(f"{root} not found: the paper is generated from a results/ folder "
                                   "(run the notebooks or point --results at one)")
    return PaperSources(root, grids or CommittedGrids())

