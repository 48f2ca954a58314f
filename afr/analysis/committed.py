"""Reading the committed results: the published runs' records and the tidy tables, reduced for the figures.

Notebook 07 reads the committed ``results/`` folder (by default the project's own, not ``$AFR_RESULTS``: under
``make test`` that variable points at a scratch folder holding only what the test run wrote) and writes its
figures and numbers elsewhere. Which runs count:

* DA-LoRA: the runs of notebook 03's committed grid (:func:`dalora_grid_records`; the gates) and those whose
  adapters are published in ``results/adapters/<grid>/<method>_seed<k>/`` (their ``source.json`` names the
  record) -- not the demo or search runs beside them;
* MAML and cross-domain tables: the rows of the largest ``meta_steps`` in the table (the committed grid runs 60
  outer steps; the notebooks' demo rows, 10 steps, sit in the same table);
* ablations: ``results/tables/ablations.csv`` when it exists (test split), grouped by its ``group``/``cell``;
* full profile (CASIA-WebFace, the five InsightFace packs): the test rows whose run was of the full profile
  (:func:`full_profile_rows`; the paper's full-profile tables read the same rows).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from afr.paths import PROJECT_ROOT

__all__ = ["RECORD_FOLDERS", "ablation_sensitivity", "benchmark_summary", "committed_results_dir",
           "crossdomain_curves", "dalora_grid_records", "dalora_grid_tags", "full_profile_rows", "gate_matrices",
           "maml_curves", "published_records", "read_table", "dalora_zero_shot_test"]

#: where each table's JSON records are (``results/<folder>/<tag>.json``; the baseline's are in ``results/`` itself)
RECORD_FOLDERS = {"baseline": "", "dalora": "dalora", "maml": "maml", "crossdomain": "crossdomain",
                  "ablations": "ablations"}
#: the data profile of a row whose table has no ``data_profile`` column and whose run has no record saying otherwise
DEFAULT_PROFILE = "embedded"
#: the tables whose full-profile rows score a method on the five benchmarks (notebooks 02 and 03)
BENCHMARK_TABLES = ("baseline", "dalora")


def committed_results_dir(results_dir: str | Path | None = None) -> Path:
    """``results_dir`` or the project's own ``results/`` folder; raises FileNotFoundError if it is missing."""
    path = Path(results_dir) if results_dir is not None else PROJECT_ROOT / "results"
    if not path.is_dir():
        raise FileNotFoundError(f"committed results folder not found: {path}")
    return path


def read_table(results_dir: str | Path, name: str, healthy: bool = False) -> pd.DataFrame | None:
    """``results_dir/tables/<name>.csv`` as a DataFrame, or None when the table does not exist (yet). ``healthy``:
    without the rows of the runs the training-health check flags (:func:`afr.experiments.health.healthy_rows`), as
    every mean a figure draws must be."""
    path = Path(results_dir) / "tables" / f"{name}.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if healthy:
        from afr.experiments.health import healthy_rows

        table = healthy_rows(table, results_dir)
    return table


def full_profile_rows(table: pd.DataFrame, records: str | Path,
                      from_records: tuple[str, ...] = ("num_identities",)) -> pd.DataFrame:
    """The test rows of ``table`` from full-profile runs, with the column ``data_profile`` and the settings
    ``from_records`` as columns.

    Each comes from the table where it has the column, else from the run's JSON record ``<records>/<run>.json``
    (its ``settings``); a run whose table and record say nothing is of the embedded profile (its table was
    written before the column existed); a setting nobody gives is left empty (``num_identities``: NaN, as None in
    a record, which means every identity).
    """
    frame = table[table["split"] == "test"] if "split" in table else table
    if not len(frame):
        return frame.assign(data_profile=[], **{name: [] for name in from_records})
    frame = frame.copy()
    settings: dict[str, dict] = {}

    def setting(run: str, name: str, default):
        if run not in settings:
            path = Path(records) / f"{run}.json"
            settings[run] = json.loads(path.read_text()).get("settings", {}) if path.is_file() else {}
        return settings[run].get(name, default)

    if "data_profile" not in frame:
        frame["data_profile"] = frame["run"].map(lambda run: setting(run, "data_profile", DEFAULT_PROFILE))
    frame = frame[frame["data_profile"] == "full"].copy()  # empty (a row written before the column): embedded
    for name in from_records:
        if name not in frame:
            frame[name] = frame["run"].map(lambda run, name=name: setting(run, name, None))
    if "num_identities" in frame:
        frame["num_identities"] = pd.to_numeric(frame["num_identities"], errors="coerce")
    return frame


def benchmark_summary(results_dir: str | Path, metric: str = "accuracy") -> pd.DataFrame | None:
    """Full-profile test ``metric`` per (backbone, method, identities, benchmark) of notebooks 02 and 03: mean, sd
    and seeds; ``identities`` is ``"none"`` for zero-shot, ``"all"`` or the CASIA-WebFace identity count. None when
    no full-profile run is recorded."""
    from afr.data.benchmarks import FULL_BENCHMARKS

    frames = []
    for name in BENCHMARK_TABLES:
        table = read_table(results_dir, name, healthy=True)
        if table is not None:
            rows = full_profile_rows(table, Path(results_dir) / RECORD_FOLDERS[name])
            frames.append(rows[(rows["metric"] == metric) & rows["domain"].isin(FULL_BENCHMARKS)])
    rows = pd.concat(frames, ignore_index=True) if frames else None
    if rows is None or not len(rows):
        return None
    rows["identities"] = ["none" if method == "zero-shot" else "all" if pd.isna(ids) else str(int(ids))
                          for method, ids in zip(rows["method"], rows["num_identities"])]
    keys = ["backbone", "method", "identities"]
    rows = rows.drop_duplicates([*keys, "seed", "domain"], keep="last")
    return _summary(rows, [*keys, "domain"])


def dalora_grid_tags(results_dir: str | Path) -> dict[tuple[str, int], str]:
    """``(method, seed) -> tag`` of notebook 03's committed grid (:attr:`~afr.experiments.grids.CommittedGrids.dalora`,
    at the learning rates it chose on validation) in ``results_dir``'s table; empty without the table."""
    from afr.experiments.grids import CommittedGrids

    table = read_table(results_dir, "dalora")
    return CommittedGrids().dalora_tags(table) if table is not None else {}


def dalora_zero_shot_test(results_dir: str | Path, domains) -> tuple[str, dict[str, dict[str, float]]]:
    """Notebook 03's committed grid's zero-shot test rows (centred as that grid is): ``(run tag, {domain: {"auc",
    "accuracy_mean", "eer"}})`` for each of ``domains``; FileNotFoundError naming the table when one is missing."""
    from afr.experiments.grids import CommittedGrids

    from afr.paths import shown_path

    zero_tag = CommittedGrids().dalora_zero_shot_tag()
    table = read_table(results_dir, "dalora")
    rows = table[(table["run"] == zero_tag) & (table["split"] == "test")] if table is not None else None
    test: dict[str, dict[str, float]] = {}
    for domain in domains:
        values = {} if rows is None else dict(zip(rows.loc[rows["domain"] == domain, "metric"],
                                                  rows.loc[rows["domain"] == domain, "value"]))
        missing = {"auc", "accuracy", "eer"} - set(values)
        if missing:
            raise FileNotFoundError(f"no zero-shot {', '.join(sorted(missing))} row {zero_tag} for {domain} in "
                                    f"{shown_path(results_dir)}/tables/dalora.csv")
        test[domain] = {"auc": float(values["auc"]), "accuracy_mean": float(values["accuracy"]),
                        "eer": float(values["eer"])}
    return zero_tag, test


def dalora_grid_records(results_dir: str | Path, method: str) -> list[dict]:
    """The records of ``method``'s runs in notebook 03's committed grid (:func:`dalora_grid_tags`) that
    ``results_dir`` holds, by seed."""
    tags = dalora_grid_tags(results_dir)
    paths = [Path(results_dir) / RECORD_FOLDERS["dalora"] / f"{tags[key]}.json"
             for key in sorted(tags, key=lambda key: key[1]) if key[0] == method]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def published_records(results_dir: str | Path, method: str) -> list[dict]:
    """The records of ``method``'s published adapters (``adapters/<method>_seed<k>/source.json``), by seed."""
    results_dir = Path(results_dir)
    records = []
    for source_path in sorted((results_dir / "adapters").glob(f"{method}_seed*/source.json")):
        source = json.loads(source_path.read_text())
        if source.get("method") != method:
            continue
        record_path = results_dir / Path(source["record"]).relative_to("results")
        if not record_path.is_file():
            raise FileNotFoundError(f"{source_path} names the record {record_path}, which is missing")
        records.append(json.loads(record_path.read_text()))
    return sorted(records, key=lambda record: record["seed"])


def gate_matrices(records: list[dict], kind: str = "mean") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sd over the records of their ``gates[kind]`` tables (rows: test pack, columns: expert).

    ``kind="mean"``: the mean gate of each expert on each pack; ``kind="argmax"``: the share of images whose
    largest gate is each expert (the router's confusion matrix). Raises ValueError when no record has gates.
    """
    tables = [pd.DataFrame(record["gates"][kind]).T for record in records if "gates" in record]
    if not tables:
        raise ValueError("none of the records has a 'gates' entry (only DA-LoRA classifier runs record them)")
    stacked = np.stack([table.loc[tables[0].index, tables[0].columns].to_numpy() for table in tables])
    mean = pd.DataFrame(stacked.mean(axis=0), index=tables[0].index, columns=tables[0].columns)
    sd = pd.DataFrame(stacked.std(axis=0, ddof=1) if len(tables) > 1 else np.zeros_like(stacked[0]),
                      index=tables[0].index, columns=tables[0].columns)
    return mean, sd


def _committed_grid(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["meta_steps"] == table["meta_steps"].max()] if "meta_steps" in table else table


def _summary(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = table.groupby(keys)["value"]
    return grouped.agg(mean="mean", sd="std", seeds="count").reset_index()


def maml_curves(table: pd.DataFrame, metric: str = "auc", grid: str | None = None) -> pd.DataFrame:
    """``metric`` per (method, shots, steps): mean, sd and number of seeds, committed grid only: the rows whose
    ``grid`` cell names ``grid`` where there are any, else the runs with the most outer steps; of those, the runs
    that chose their step count on validation where there are any. Those scored the test pack once, at the chosen
    step count, so their curves are the **validation** curves: the column ``split`` says which (``val`` or
    ``test``)."""
    from afr.experiments.records import in_grid

    named = in_grid(table, grid) if grid is not None else pd.Series(False, index=table.index)
    rows = table[named] if named.any() else _committed_grid(table)
    chose = (rows["choose_steps_on_validation"].astype(str) == "True") if "choose_steps_on_validation" in rows \
        else pd.Series(False, index=rows.index)
    rows, split = (rows[chose], "val") if chose.any() else (rows, "test")
    rows = rows[(rows["metric"] == metric) & (rows["split"] == split)]
    return _summary(rows, ["method", "domain", "shots", "steps"]).assign(split=split)


#: notebook 05's default shift, as its table names it (rows written before the column existed leave it empty)
THERMAL_TARGET = "thermal_und+thermal_puj"


def crossdomain_curves(table: pd.DataFrame, metric: str = "auc", target: str | None = THERMAL_TARGET,
                       grids: Sequence[str] = ()) -> pd.DataFrame:
    """Test ``metric`` per (method, domain, shots) of the shift to ``target`` (None: every row): mean, sd and number
    of seeds, committed grid only: the rows whose ``grid`` cell names one of ``grids`` where there are any (e.g. the
    reported thermal grids, which share their starts and zero-shot rows with the first ones), else the runs with the
    most outer steps; ``shots`` -1 is k = "all" (:data:`afr.experiments.crossdomain.ALL_SHOTS`)."""
    from afr.experiments.records import in_grid

    if target is not None and "target" in table:
        table = table[table["target"].isna() | (table["target"] == target)]
    named = pd.Series(False, index=table.index)
    for grid in grids:
        named |= in_grid(table, grid)
    rows = table[named] if named.any() else _committed_grid(table)
    rows = rows[(rows["metric"] == metric) & (rows["split"] == "test")]
    return _summary(rows, ["method", "domain", "shots"])


def ablation_sensitivity(table: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Test ``metric`` per (group, cell, domain): mean, sd and seeds; ``cell_value`` is the cell as a number
    where it reads as one (for the sensitivity axes), NaN otherwise (the component rows)."""
    missing = {"group", "cell"} - set(table.columns)
    if missing:
        raise ValueError(f"the ablations table lacks the columns {sorted(missing)}")
    rows = table[(table["metric"] == metric) & (table["split"] == "test")]
    summary = _summary(rows, ["group", "cell", "domain"])
    summary["cell_value"] = pd.to_numeric(summary["cell"], errors="coerce")
    return summary
