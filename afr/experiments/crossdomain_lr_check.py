"""Notebook 05's stage-2 learning-rate check, on the validation identities only.

Notebook 05 adapts its starts with SGD at ``adapt_lr`` (3e-4 since this check: a first, one-seed run of it had kept
1e-3). The check: the ``lora`` method from the seed's pooled
start, k = 1 and 4, 50 SGD steps at each candidate rate, the thermal validation identities (``val/thermal.bin``)
scored after 0, 1, 3, 5, 10, 25 and 50 steps. The runs go to a scratch folder (``AFR_RESULTS``/``AFR_RUNS`` point
there, the starts are meta-trained again); only their validation curves, chosen step counts and losses are kept, as
``results/analysis/crossdomain_lr/<method>_seed<seed>_adapt-lr<rate>.json``. The runs' test scores stay in the scratch
folder: they are not read, so the choice of the rate never sees a test pack.

    python -m afr.experiments.crossdomain_lr_check --seeds 1 2 --adapt-lrs 0.0003 0.001

A summary that exists is kept (never overwritten): the command says so and skips that (seed, rate) before any run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from afr.io import atomic_write_text
from afr.paths import results_root

METHOD = "lora"
SHOTS = (1, 4)
ADAPT_STEPS = 50
META_STEPS = 60


def summary_path(seed: int, adapt_lr: float, method: str = METHOD) -> Path:
    return results_root() / "analysis" / "crossdomain_lr" / f"{method}_seed{seed}_adapt-lr{adapt_lr:g}.json"


def command(seed: int, adapt_lr: float, method: str = METHOD, progress: bool = True) -> list[str]:
    """The notebook-05 run of the check (``python -m afr crossdomain``); ``progress``: its progress bars (stderr)."""
    return [sys.executable, "-m", "afr", "crossdomain", "--methods", method, "--seeds", str(seed),
            "--shots", *map(str, SHOTS), "--meta-steps", str(META_STEPS), "--adapt-steps", str(ADAPT_STEPS),
            "--choose-steps-on-validation", "--adapt-lr", f"{adapt_lr:g}", *([] if progress else ["--no-progress"])]


def summary(record: dict[str, Any], adapt_lr: float, shown_command: Sequence[str]) -> dict[str, Any]:
    """What the check keeps of a run's record: the validation curves (AUC per step count), the chosen step count
    and the losses per k; never its ``test``."""
    adaptation = {}
    for key, entry in record["adaptation"].items():
        adaptation[key] = {"validation_pack": entry["validation_pack"],
                           "validation_auc": {steps: metrics["auc"] for steps, metrics in entry["validation"].items()},
                           "chosen_steps": entry["chosen_steps"], "losses": entry["losses"]}
    what = (f"stage-2 learning-rate check of notebook 05, validation identities only (val/thermal.bin): the "
            f"{record['method']} method from the seed-{record['seed']} pooled start ({record['start']}, rebuilt), "
            f"k = {' and '.join(map(str, SHOTS))}, {ADAPT_STEPS} SGD steps at this adapt_lr, validation AUC after "
            f"{' '.join(next(iter(adaptation.values()))['validation_auc'])} steps. The run's test scores are not kept "
            f"here and were not read. Command: OMP_NUM_THREADS=1 {' '.join(['python', *shown_command[1:]])} "
            "(AFR_RESULTS/AFR_RUNS pointed at a scratch folder; python -m afr.experiments.crossdomain_lr_check)")
    return {"what": what, "adapt_lr": adapt_lr, "start": record["start"], "seed": record["seed"],
            "adaptation": adaptation, "environment": record["environment"], "wall_seconds": record["wall_seconds"]}


def best_validation_auc(summaries: Sequence[dict[str, Any]]) -> dict[float, dict[tuple[int, str], float]]:
    """The check's rule reads, per rate, each (seed, k)'s best validation AUC over the step counts:
    ``{adapt_lr: {(seed, "k1"): auc, ...}}``; the rate with the higher mean over seeds and k wins."""
    best: dict[float, dict[tuple[int, str], float]] = {}
    for entry in summaries:
        for shots, adaptation in entry["adaptation"].items():
            best.setdefault(entry["adapt_lr"], {})[entry["seed"], shots] = max(adaptation["validation_auc"].values())
    return best


def run_check(seed: int, adapt_lr: float, scratch: Path, method: str = METHOD, progress: bool = True) -> Path:
    """One (seed, rate): the run in ``scratch`` (its progress bars shown on stderr unless ``progress`` is false; its
    printed summary, which holds test scores, silenced), its summary written (atomically) under ``results/``."""
    argv = command(seed, adapt_lr, method, progress)
    env = {**os.environ, "AFR_RESULTS": str(scratch / "results"), "AFR_RUNS": str(scratch / "runs"),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    records = [path for path in (scratch / "results" / "crossdomain").glob(f"crossdomain_{method}_seed{seed}_*.json")
               if json.loads(path.read_text()).get("settings", {}).get("adapt_lr") == adapt_lr]
    if len(records) != 1:
        raise RuntimeError(f"expected one {method} record of seed {seed} at adapt_lr {adapt_lr:g} in {scratch}, "
                           f"found {len(records)}")
    path = summary_path(seed, adapt_lr, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary(json.loads(records[0].read_text()), adapt_lr, argv), indent=1) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--adapt-lrs", type=float, nargs="+", required=True)
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the runs' progress bars (about 4 minutes per seed and rate on one thread)")
    args = parser.parse_args(argv)
    todo = [(seed, rate) for seed in args.seeds for rate in args.adapt_lrs]
    for seed, rate in todo:
        if summary_path(seed, rate).exists():
            print(f"kept: {summary_path(seed, rate)} exists (not run again)")
    todo = [(seed, rate) for seed, rate in todo if not summary_path(seed, rate).exists()]
    with tempfile.TemporaryDirectory(prefix="afr-lr-check-") as scratch:
        for seed, rate in todo:
            print(f"wrote {run_check(seed, rate, Path(scratch), progress=args.progress)}", flush=True)


if __name__ == "__main__":
    main()
