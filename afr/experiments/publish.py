"""Publish the adapters notebook 07 draws from notebook 03's committed grid (``make publish-adapters``).

``python -m afr.experiments.publish`` copies the adapters of the committed grid's runs
(:attr:`~afr.experiments.grids.CommittedGrids.dalora`, at the learning rates it chose on validation) from their run
folders to ``results/adapters/<grid>/<method>_seed<k>/`` with a ``source.json`` naming each run's record
(:func:`~afr.experiments.dalora_run.export_adapters`). By default only what notebook 07 draws is published:
LoRA and the DA-LoRA classifier of seeds 0-2 (a DA-LoRA adapter is 3 MB; every run's record, gates included, is
committed anyway). A run whose record is missing, or whose run folder is not on this machine, is refused before
anything is copied; an adapter another run published there is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from afr.validation import SettingsError

__all__ = ["PUBLISHED_METHODS", "PUBLISHED_SEEDS", "main", "publish"]

#: the rows and seeds notebook 07 reads: seed 0 drawn (afr.analysis.report.DEFAULT_ADAPTERS), every seed in its
#: readings over seeds (FigureReport.seed_spread)
PUBLISHED_METHODS = ("lora", "dalora-classifier")
PUBLISHED_SEEDS = (0, 1, 2)


def publish(methods: Sequence[str] = PUBLISHED_METHODS, seeds: Sequence[int] = PUBLISHED_SEEDS,
            overwrite: bool = False) -> list[Path]:
    """Copy the committed grid's adapters of ``methods`` x ``seeds``; the folders written."""
    from afr.experiments.dalora_run import RunOutcome, adapters_folder, export_adapters
    from afr.experiments.grids import CommittedGrids
    from afr.experiments.records import read_table, table_path
    from afr.paths import results_root

    grids = CommittedGrids()
    grid = grids.dalora
    unknown = [f"method {method}" for method in methods if method not in grid.methods]
    unknown += [f"seed {seed}" for seed in seeds if seed not in grid.seeds]
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: not in notebook 03's committed grid {grid.grid} (methods "
                            f"{', '.join(grid.methods)}; seeds {', '.join(map(str, grid.seeds))})")
    table = read_table(grid.experiment)
    if table.empty:
        raise FileNotFoundError(f"no rows in {table_path(grid.experiment)}: run notebook 03's committed grid first "
                                "(make dalora-results)")
    tags = grids.dalora_tags(table, grid)
    paths = {(method, seed): results_root() / grid.experiment / f"{tags[method, seed]}.json"
             for method in methods for seed in seeds}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no record {', '.join(missing)}: run notebook 03's committed grid first "
                                "(make dalora-results)")
    outcomes = {key: RunOutcome(json.loads(path.read_text()), reused=True) for key, path in paths.items()}
    return export_adapters(outcomes, overwrite=overwrite, folder=adapters_folder(grid.grid), required=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m afr.experiments.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(PUBLISHED_METHODS), help="rows of the grid to publish")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(PUBLISHED_SEEDS), help="seeds to publish")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter another run published")
    args = parser.parse_args(argv)
    try:
        folders = publish(args.methods, args.seeds, args.overwrite)
    except (SettingsError, FileNotFoundError, FileExistsError) as error:  # ResultExistsError is a FileExistsError
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for folder in folders:
        print(folder)


if __name__ == "__main__":
    main()
