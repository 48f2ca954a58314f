"""Summaries of a settings search made on the validation packs: which candidate wins, by a rule fixed in advance.

``python -m afr.experiments.search baseline`` reads the baseline records in ``results/`` that were run with
``score_test=False`` (a search run: the test packs were never scored) of one committed search (``--grid``: notebook
02's search on the fitted recipe, ``baseline-search-fitted``, by default; ``baseline-search``: the first one), groups
them by the settings they differ in, and ranks the candidates by the mean validation AUC of the last epoch over
validation domains and seeds. The table goes to ``results/tables/<grid with _>.csv`` and is printed.
"""
from __future__ import annotations

import argparse
import io
import json
from collections.abc import Collection, Sequence

import numpy as np

from afr.experiments.records import final_validation_metrics
from afr.io import atomic_write_text
from afr.paths import results_root, tables_root

__all__ = ["SEARCHES", "search_table"]

#: the committed searches of notebook 02 (:class:`afr.experiments.grids.CommittedGrids`): on the fitted recipe, and
#: the first one
SEARCHES = ("baseline-search-fitted", "baseline-search")


def _search_records(experiment: str, tags: Collection[str] | None = None) -> list[dict]:
    records = []
    for path in sorted(results_root().glob(f"{experiment}_*.json")):
        if tags is not None and path.stem not in tags:
            continue
        record = json.loads(path.read_text())
        if record.get("experiment") == experiment and not record["settings"].get("score_test", True):
            records.append(record)
    return records


def search_table(experiment: str = "baseline", tags: Collection[str] | None = None):
    """One row per candidate: the settings that vary, seeds, per-domain and mean validation AUC (last epoch); only
    the runs ``tags`` when given (one search's)."""
    import pandas as pd

    rows = []
    for record in _search_records(experiment, tags):
        aucs = {pack: metrics["auc"] for pack, metrics in final_validation_metrics(record["train"]["history"]).items()}
        rows.append({**{k: v for k, v in record["settings"].items() if k != "seed"}, "seed": record["seed"],
                     **{f"val_auc_{domain}": auc for domain, auc in aucs.items()},
                     "val_auc_mean": float(np.mean(list(aucs.values())))})
    if not rows:
        raise FileNotFoundError(f"no {experiment} search records (score_test=False) in {results_root()}")
    runs = pd.DataFrame(rows)
    settings_columns = [c for c in runs.columns if not c.startswith("val_auc") and c != "seed"]
    varying = [c for c in settings_columns if runs[c].astype(str).nunique() > 1]
    metrics = [c for c in runs.columns if c.startswith("val_auc")]
    table = runs.groupby(varying, dropna=False).agg(
        seeds=("seed", lambda seeds: ",".join(map(str, sorted(seeds)))),
        **{metric: (metric, "mean") for metric in metrics},
        val_auc_mean_sd=("val_auc_mean", "std"),
    ).reset_index().sort_values("val_auc_mean", ascending=False, ignore_index=True)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afr.experiments.search", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="baseline", choices=("baseline",))
    parser.add_argument("--grid", default="baseline-search-fitted", choices=SEARCHES,
                        help="the committed search to summarise (default: notebook 02's, on the fitted recipe)")
    args = parser.parse_args(argv)
    from afr.experiments.grids import CommittedGrids

    table = search_table(args.experiment, CommittedGrids().baseline_search_tags(first=args.grid == "baseline-search"))
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    path = tables_root() / f"{args.grid.replace('-', '_')}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    print(table.round(4).to_string(index=False))
    varying = [c for c in table.columns if c not in ("seeds", "val_auc_mean_sd") and not c.startswith("val_auc")]
    chosen = ", ".join(f"{name}={table.iloc[0][name]}" for name in varying)
    print(f"\nchosen (highest mean validation AUC over domains and seeds): {chosen}\nwritten to {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
