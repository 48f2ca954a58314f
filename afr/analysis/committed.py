"""Reading the committed results: the published runs' records and the tidy tables, reduced for the figures.

Notebook 07 reads the committed ``results/`` folder (by default the project's own, not ``$AFR_RESULTS``: under
``make test`` that variable points at a scratch folder holding only what the test run wrote) and writes its
figures and numbers elsewhere. Which runs count:

* DA-LoRA: the runs whose adapters are published in ``results/adapters/<method>_seed<k>/`` (their
  ``source.json`` names the record) -- the committed 3-seed grid, not the demo or search runs beside it;
* MAML and cross-domain tables: the rows of the largest ``meta_steps`` in the table (the committed grid runs 60
  outer steps; the notebooks' demo rows, 10 steps, sit in the same table);
* ablations: ``results/tables/ablations.csv`` when it exists (test split), grouped by its ``group``/``cell``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from afr.paths import PROJECT_ROOT

__all__ = ["ablation_sensitivity", "committed_results_dir", "crossdomain_curves", "gate_matrices", "maml_curves",
           "published_records", "read_table"]


def committed_results_dir(results_dir: str | Path | None = None) -> Path:
    """``results_dir`` or the project's own ``results/`` folder; raises FileNotFoundError if it is missing."""
    path = Path(results_dir) if results_dir is not None else PROJECT_ROOT / "results"
    if not path.is_dir():
        raise FileNotFoundError(f"committed results folder not found: {path}")
    return path


def read_table(results_dir: str | Path, name: str) -> pd.DataFrame | None:
    """``results_dir/tables/<name>.csv`` as a DataFrame, or None when the table does not exist (yet)."""
    path = Path(results_dir) / "tables" / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


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


def maml_curves(table: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Test ``metric`` per (method, shots, steps): mean, sd and number of seeds, committed grid only."""
    rows = _committed_grid(table)
    rows = rows[(rows["metric"] == metric) & (rows["split"] == "test")]
    return _summary(rows, ["method", "domain", "shots", "steps"])


#: notebook 05's default shift, as its table names it (rows written before the column existed leave it empty)
THERMAL_TARGET = "thermal_und+thermal_puj"


def crossdomain_curves(table: pd.DataFrame, metric: str = "auc", target: str = THERMAL_TARGET) -> pd.DataFrame:
    """Test ``metric`` per (method, domain, shots) of the shift to ``target``: mean, sd and number of seeds,
    committed grid only; ``shots`` -1 is k = "all" (:data:`afr.experiments.crossdomain.ALL_SHOTS`)."""
    if "target" in table:
        table = table[table["target"].isna() | (table["target"] == target)]
    rows = _committed_grid(table)
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
