"""What experiments leave behind: one JSON record per run and one long ("tidy") table per experiment.

* ``results/<tag>.json``: the run's settings (seed included), training history, every metric, the
  machine it ran on. Written atomically; an existing record is replaced only when asked.
* ``results/tables/<experiment>.csv``: one row per (run, method, domain, metric, seed) with the
  columns :data:`TABLE_COLUMNS` plus the settings that differ from the defaults, so summaries,
  significance tests, figures and the paper all read one table with pandas. Re-recording a run
  replaces that run's rows and nothing else.
"""
from __future__ import annotations

import io
import json
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afr.io import atomic_write_text
from afr.paths import results_root, tables_root

__all__ = ["TABLE_COLUMNS", "ResultExistsError", "append_rows", "environment_info", "final_validation_metrics", "json_default",
           "metric_rows",
           "read_table", "result_path", "save_result"]

#: the columns every tidy table starts with
TABLE_COLUMNS = ("experiment", "run", "method", "domain", "metric", "seed", "value")
#: metrics of :meth:`afr.eval.verification.VerificationResult.to_dict` that go to the tables, by column name
TABLE_METRICS = {"accuracy": "accuracy_mean", "accuracy_std": "accuracy_std", "auc": "auc", "eer": "eer"}


class ResultExistsError(FileExistsError):
    """A run would replace an earlier run's result; the message says how to keep or replace it."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: Any = "cpu") -> dict[str, Any]:
    """Where a number was measured: library versions, device, CPU model, thread counts."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def result_path(tag: str) -> Path:
    return results_root() / f"{tag}.json"


def check_result_free(tag: str, overwrite: bool) -> Path:
    """The result path of ``tag``; raises :class:`ResultExistsError` if a record is there and not ``overwrite``."""
    path = result_path(tag)
    if path.exists() and not overwrite:
        raise ResultExistsError(
            f"{path} already holds the result of a run with these settings; pass overwrite=True "
            "(--overwrite) to replace it, or change a setting")
    return path


def save_result(result: Mapping[str, Any], tag: str, overwrite: bool = False) -> Path:
    """Write ``results/<tag>.json`` atomically and return its path."""
    path = check_result_free(tag, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, default=json_default) + "\n")
    return path


def metric_rows(experiment: str, run: str, method: str, seed: int, metrics_by_domain: Mapping[str, Mapping],
                extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Tidy rows of one method's metrics on every domain (``{domain: VerificationResult.to_dict()}``)."""
    rows = []
    for domain, metrics in metrics_by_domain.items():
        for metric, key in TABLE_METRICS.items():
            if key in metrics and metrics[key] is not None:
                rows.append({"experiment": experiment, "run": run, "method": method, "domain": domain,
                             "metric": metric, "seed": seed, "value": float(metrics[key]), **(extra or {})})
    return rows


def final_validation_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{pack: {"accuracy_mean": ..., "auc": ...}}`` from the last epoch's ``val/<pack>/<metric>`` entries of a
    training history (the names :func:`metric_rows` reads)."""
    metrics: dict[str, dict[str, float]] = {}
    for key, value in (history[-1] if history else {}).items():
        if key.startswith("val/"):
            _, name, metric = key.split("/")
            metrics.setdefault(name, {})["accuracy_mean" if metric == "accuracy" else metric] = value
    return metrics


def read_table(experiment: str):
    """``results/tables/<experiment>.csv`` as a pandas DataFrame (empty with the common columns if absent)."""
    import pandas as pd

    path = tables_root() / f"{experiment}.csv"
    if not path.is_file():
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return pd.read_csv(path)


def append_rows(experiment: str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Add ``rows`` to the experiment's table, replacing earlier rows of the same runs; atomic."""
    import pandas as pd

    new = pd.DataFrame([dict(row) for row in rows])
    missing = [column for column in TABLE_COLUMNS if column not in new.columns]
    if new.empty or missing:
        raise ValueError(f"rows for {experiment} need the columns {TABLE_COLUMNS} (missing {missing})")
    old = read_table(experiment)
    kept = old[~old["run"].isin(set(new["run"]))] if len(old) else old
    table = pd.concat([frame for frame in (kept, new) if len(frame)], ignore_index=True)
    ordered = list(TABLE_COLUMNS) + [column for column in table.columns if column not in TABLE_COLUMNS]
    buffer = io.StringIO()
    table[ordered].to_csv(buffer, index=False)
    path = tables_root() / f"{experiment}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
