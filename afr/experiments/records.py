"""What experiments leave behind: one JSON record per run and one long ("tidy") table per experiment.

* ``results/<tag>.json``: the run's settings (seed included), training history, every metric, the
  machine it ran on. Written atomically; an existing record is replaced only when asked.
* ``results/tables/<experiment>.csv``: one row per (run, method, domain, metric, seed) with the
  columns :data:`TABLE_COLUMNS` plus the settings that differ from the defaults, so summaries,
  significance tests, figures and the paper all read one table with pandas. Re-recording a run
  replaces that run's rows and nothing else.

Nothing is lost: a record and its rows are written together under the table's lock
(:func:`write_record`; if the rows cannot be written the record is taken back), a reused record gets
its rows back if a run was killed between the two writes (:func:`reuse_record`), and concurrent
writers of one table wait for each other (:func:`table_lock`), so every row of each is kept.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from afr.io import atomic_write_bytes, atomic_write_text, check_writable_folder
from afr.paths import MissingResourceError, results_root, shown_path, tables_root  # noqa: F401 (shown_path: importable here)

__all__ = ["GRID_COLUMN", "GRID_METRICS", "GridRuns", "MissingStartError", "ResultExistsError", "TABLE_COLUMNS",
           "UnfinishedRunError", "append_rows", "append_rows_unlocked", "check_outputs_writable",
           "check_start_adapters", "check_unfinished_runs", "environment_info", "file_lock",
           "final_validation_metrics", "grid_metric_values", "grid_names", "has_rows", "in_grid", "json_default", "label_runs", "metric_rows",
           "missing_start_error", "read_table", "result_path", "reuse_note", "reuse_record", "save_result",
           "table_lock", "table_path", "write_record"]

#: the columns every tidy table starts with
TABLE_COLUMNS = ("experiment", "run", "method", "domain", "metric", "seed", "value")
#: the column after them: the committed grid(s) a run belongs to (:data:`afr.experiments.grids.GRID_NAMES`, joined
#: by ``;``), empty for demo and search runs outside them, so the paper's rows can be selected without the package
GRID_COLUMN = "grid"
#: metrics of :meth:`afr.eval.verification.VerificationResult.to_dict` that go to the tables, by column name
TABLE_METRICS = {"accuracy": "accuracy_mean", "accuracy_std": "accuracy_std", "auc": "auc", "eer": "eer"}


class GridRuns(dict):
    """A grid's runs by key (a plain dict), knowing which keys were reused (recorded before) rather than trained now:
    a notebook writes its figure file only when something was trained (a reused grid's figure is the committed one,
    drawn from the same records)."""

    def __init__(self, runs: Mapping[Any, Any] = (), reused: Iterable[Any] = ()):
        super().__init__(runs)
        self.reused = tuple(reused)

    @property
    def trained_now(self) -> bool:
        """Whether any run of the grid was trained by this call (not reused)."""
        reused = set(self.reused)
        return any(key not in reused for key in self)


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
    """Write ``results/<tag>.json`` atomically (no table rows: see :func:`write_record`) and return its path."""
    path = check_result_free(tag, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, _record_text(result))
    return path


def _record_text(record: Mapping[str, Any]) -> str:
    return json.dumps(record, indent=1, default=json_default) + "\n"


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for the ``with`` block; other processes wait.
    The lock goes with the process: a writer killed mid-way never leaves the table locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_outputs_writable(experiment: str, runs_folder: str | Path | None = None, records_folder: str | Path | None = None,
                           ) -> None:
    """Before any work: the experiment's records folder (``results/<experiment>/``, or ``records_folder``), its
    table's folder and the runs folder accept new files (one error naming the folder otherwise)."""
    from afr.paths import runs_root

    check_writable_folder(records_folder or results_root() / experiment, "results folder")
    check_writable_folder(tables_root(), "tables folder")
    check_writable_folder(runs_folder or runs_root(), "runs folder")


class MissingStartError(MissingResourceError):
    """A run needs a recorded (meta-trained) start's adapter, which is not on this machine."""


def missing_start_error(missing: Sequence[str], needed_by: str, rebuilt: str = "") -> MissingStartError:
    """The one refusal of runs that need recorded starts without their adapters (``missing``: ``"<start tag>
    (<adapter folder>)"`` each), naming them, what needs them (``needed_by``), and the one flag that rebuilds them
    (``rebuilt``: where the rebuilt starts' results go, if anywhere)."""
    return MissingStartError(
        f"recorded start(s) without their adapter on this machine: {', '.join(dict.fromkeys(missing))}, needed by "
        f"{needed_by}. Pass --rebuild-starts (rebuild_starts=True) to meta-train them again into their run folders "
        f"(their records are kept{'; ' + rebuilt if rebuilt else ''}), or run where runs/ holds them")


def check_start_adapters(starts: Iterable[tuple[str, str | Path, str | Path]], needed_by: str, rebuilt: str = ""
                         ) -> None:
    """Before any work: ``starts`` are the ``(start tag, record path, adapter folder)`` of the starts runs still to
    train need; those recorded (a fresh clone has ``results/``, not ``runs/``) whose adapter is not on this machine
    are refused all at once (:func:`missing_start_error`) instead of being meta-trained again over their record."""
    missing = [f"{tag} ({adapter})" for tag, record, adapter in starts
               if Path(record).is_file() and not Path(adapter).is_dir()]
    if missing:
        raise missing_start_error(missing, needed_by, rebuilt)


class UnfinishedRunError(FileExistsError):
    """Runs a grid still has to do hold an unfinished run's checkpoints; the message names them and the flags."""


def check_unfinished_runs(runs: Iterable[tuple[str | Path, str | Path]], resume: bool, overwrite: bool) -> None:
    """Before any work: ``runs`` are a grid's ``(record path, run folder)`` pairs; those without a record whose folder
    holds checkpoints (an interrupted run: the training engine's ``checkpoint-*.pt``, meta-training's ``last.pt``)
    would be refused one by one when the grid reaches them, after the work before them. Refuse them all at once,
    named, unless ``resume`` (continue them) or ``overwrite`` (start them again)."""
    if resume or overwrite:
        return
    unfinished = [str(folder) for record, folder in runs
                  if not Path(record).is_file() and any((Path(folder) / "checkpoints").glob("*.pt"))]
    if unfinished:
        raise UnfinishedRunError(
            f"unfinished run(s) in {', '.join(dict.fromkeys(unfinished))}: pass --resume to continue them or "
            "--overwrite to start them again (resume=True / overwrite=True in Python)")


def table_path(experiment: str) -> Path:
    """``results/tables/<experiment>.csv``."""
    return tables_root() / f"{experiment}.csv"


def table_lock(experiment: str):
    """The lock every writer of ``experiment``'s table (and of its records, see :func:`write_record`) holds."""
    return file_lock(tables_root() / f".{experiment}.lock")


def write_record(path: str | Path, record: Mapping[str, Any], experiment: str,
                 rows: Iterable[Mapping[str, Any]] = (), overwrite: bool = False, grid: str | None = None) -> Path:
    """Write a run's JSON record at ``path`` and its ``rows`` into the experiment's table, together.

    Both happen under :func:`table_lock`: an existing record is replaced only with ``overwrite`` (checked under the
    lock, so two identical runs cannot both record), and if the rows cannot be written (a full disk, say) the
    record is taken back (deleted, or the earlier one put back) before the error propagates. A process killed
    between the two writes leaves a record without rows, which :func:`reuse_record` repairs. ``grid``: the committed
    grid the run belongs to (:data:`GRID_COLUMN`). The record gets its training health (``health``:
    :func:`afr.experiments.health.run_health`, computed now; in place when it is a dict) unless it has one."""
    from afr.experiments.health import with_health

    path, rows, record = Path(path), [dict(row) for row in rows], with_health(record)
    with table_lock(experiment):
        if path.exists() and not overwrite:
            raise ResultExistsError(f"{path} already holds the result of a run with these settings; pass --overwrite "
                                    "(overwrite=True in Python) to replace it, or change a setting")
        previous = path.read_bytes() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, _record_text(record))
        try:
            if rows:
                append_rows_unlocked(experiment, rows, grid=grid)
        except BaseException:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_bytes(path, previous)
            raise
    return path


def has_rows(experiment: str, run: str) -> bool:
    """Whether the experiment's table holds a row of ``run``."""
    table = read_table(experiment)
    return bool(len(table)) and bool((table["run"] == run).any())


def reuse_record(path: str | Path, experiment: str,
                 rows_of: Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]],
                 grid: str | None = None) -> dict[str, Any]:
    """A finished run's record, read back; if the table holds none of its rows (a run killed between writing the
    record and its rows), ``rows_of(record)`` are written now, so a rerun repairs the table instead of skipping it.
    A run reused by the committed grid ``grid`` gets that name in its rows' :data:`GRID_COLUMN` (if not there)."""
    record = json.loads(Path(path).read_text())
    with table_lock(experiment):
        if not has_rows(experiment, record["tag"]):
            rows = list(rows_of(record))
            if rows:
                append_rows_unlocked(experiment, rows, grid=grid)
        elif grid:
            label_runs_unlocked(experiment, {record["tag"]: grid})
    return record


#: how every "reusing ..." line names the one parameter that retrains (notebook parameter, then CLI flag)
RETRAIN_HINT = "set overwrite = True (CLI: --overwrite) to retrain"


def reuse_note(paths: Sequence[str | Path], seeds: Iterable[int] = ()) -> str:
    """One line saying that the runs recorded at ``paths`` are reused, not retrained, and which parameter retrains
    them: "reusing the committed run <tag> (seed 0): results/<tag>.json; set overwrite = True ... to retrain".
    "committed" when the records are the project's own ``results/`` (else "recorded")."""
    from afr.paths import PROJECT_ROOT

    paths = [Path(path).resolve() for path in paths]
    if not paths:
        return ""
    kind = "committed" if all(PROJECT_ROOT / "results" in path.parents for path in paths) else "recorded"
    seeds = sorted(set(int(seed) for seed in seeds))
    seed_text = f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if seeds else ""
    if len(paths) == 1:
        what = f"the {kind} run {paths[0].stem}{seed_text}: {shown_path(paths[0])}"
    else:
        what = f"{len(paths)} {kind} runs{seed_text} from {shown_path(paths[0].parent)}/"
    return f"reusing {what}; {RETRAIN_HINT}"


def grid_names(cell: Any) -> list[str]:
    """The grid names of a table's :data:`GRID_COLUMN` cell (``;``-joined; empty or missing: none)."""
    return [name for name in str(cell).split(";") if name] if isinstance(cell, str) else []


def in_grid(table, grid: str):
    """A boolean Series: which rows of a tidy table belong to the committed grid ``grid`` (their grid cell names it;
    all False when the table has no grid column)."""
    if GRID_COLUMN not in table:
        import pandas as pd

        return pd.Series(False, index=table.index)
    return table[GRID_COLUMN].map(lambda cell: grid in grid_names(cell)).astype(bool)


def _joined(*cells: Any, order: Sequence[str] = ()) -> str:
    """The grid names of ``cells``, each once; those in ``order`` first, in its order, then the rest as found."""
    names = list(dict.fromkeys(name for cell in cells for name in grid_names(cell)))
    rank = {name: index for index, name in enumerate(order)}
    return ";".join(sorted(names, key=lambda name: rank.get(name, len(rank))))


def label_runs(experiment: str, labels: Mapping[str, str], order: Sequence[str] = ()) -> Path | None:
    """Add the grid names ``labels[run]`` (``;``-joined) to the :data:`GRID_COLUMN` of every row of each run,
    keeping the names already there (those in ``order`` first, in its order: a grid defined later may sort before
    one labelled earlier); under :func:`table_lock`. Returns the table's path (None: no table)."""
    with table_lock(experiment):
        return label_runs_unlocked(experiment, labels, order)


def label_runs_unlocked(experiment: str, labels: Mapping[str, str], order: Sequence[str] = ()) -> Path | None:
    table = read_table(experiment)
    if not len(table):
        return None
    old = table[GRID_COLUMN] if GRID_COLUMN in table else [None] * len(table)
    new = [_joined(cell, labels.get(run), order=order) for cell, run in zip(old, table["run"])]
    if GRID_COLUMN in table and [_joined(cell) for cell in old] == new:
        return table_path(experiment)  # nothing to add: the file stays as it is
    table[GRID_COLUMN] = new
    return _write_table(experiment, table)


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

    path = table_path(experiment)
    if not path.is_file():
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return pd.read_csv(path)


def append_rows(experiment: str, rows: Iterable[Mapping[str, Any]], grid: str | None = None,
                replaces: Sequence[str] = ("run",)) -> Path:
    """Add ``rows`` to the experiment's table, replacing the earlier rows that share a key ``replaces`` with one of
    them (default: the earlier rows of the same runs; notebook 06 gives ``("run", "group", "cell")``, as one run
    serves several cells and a grid may run some groups only); atomic, and under :func:`table_lock` (concurrent
    writers keep every row). Each row's :data:`GRID_COLUMN` names ``grid`` and the grids the run's earlier rows
    named."""
    rows = [dict(row) for row in rows]
    with table_lock(experiment):
        return append_rows_unlocked(experiment, rows, grid=grid, replaces=replaces)


def append_rows_unlocked(experiment: str, rows: Sequence[Mapping[str, Any]], grid: str | None = None,
                         replaces: Sequence[str] = ("run",)) -> Path:
    """:func:`append_rows` for a caller that holds :func:`table_lock` already (a read-check-write of its own)."""
    import pandas as pd

    new = pd.DataFrame([dict(row) for row in rows])
    missing = [column for column in (*TABLE_COLUMNS, *replaces) if column not in new.columns]
    if new.empty or missing:
        raise ValueError(f"rows for {experiment} need the columns {sorted(set(TABLE_COLUMNS) | set(replaces))} "
                         f"(missing {missing})")
    old = read_table(experiment)
    earlier = {}  # the grids that a replaced run's rows named
    if len(old) and GRID_COLUMN in old:
        for run, cell in zip(old["run"], old[GRID_COLUMN]):
            earlier[run] = _joined(earlier.get(run), cell)
    new[GRID_COLUMN] = [_joined(earlier.get(run), new_cell, grid)
                        for run, new_cell in zip(new["run"], new[GRID_COLUMN] if GRID_COLUMN in new else [None] * len(new))]
    replaced = _row_keys(old, replaces).isin(set(_row_keys(new, replaces))) if len(old) else None
    if len(old) and _holds_rows(old[replaced], new):
        return table_path(experiment)  # the same rows again (a reused run): the file stays as it is, rows in place
    kept = old[~replaced] if len(old) else old
    table = pd.concat([frame for frame in (kept, new) if len(frame)], ignore_index=True)
    return _write_table(experiment, table)


def _row_keys(frame, columns: Sequence[str]):
    """One string per row of ``frame`` from its ``columns``, numbers in one spelling (a table read back from csv holds
    ``8.0`` or ``"8"`` where the rows written held ``8``); a column the frame lacks reads as empty."""
    import numpy as np
    import pandas as pd

    def spelled(value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        try:
            return repr(float(value))
        except (TypeError, ValueError):
            return str(value)

    parts = [frame[column].map(spelled) if column in frame else pd.Series("", index=frame.index) for column in columns]
    return pd.Series(["\x1f".join(values) for values in zip(*parts)], index=frame.index, dtype=object)


def _holds_rows(mine, new) -> bool:
    """Whether ``mine`` (the table's rows under ``new``'s keys) are exactly ``new``'s rows (``new``'s columns, any
    order)."""
    if not set(new.columns) <= set(mine.columns):
        return False
    columns = list(new.columns)
    mine = mine[columns]
    if len(mine) != len(new):
        return False

    def canonical(frame):
        frame = frame.copy()
        if GRID_COLUMN in frame:
            frame[GRID_COLUMN] = frame[GRID_COLUMN].map(_joined)
        text = frame.astype(object).where(frame.notna(), "").astype(str)
        return sorted(map(tuple, text.to_numpy().tolist()))

    return canonical(mine) == canonical(new)


def _write_table(experiment: str, table) -> Path:
    if GRID_COLUMN in table:
        table[GRID_COLUMN] = table[GRID_COLUMN].map(_joined)
    leading = [*TABLE_COLUMNS, GRID_COLUMN] if GRID_COLUMN in table else list(TABLE_COLUMNS)
    ordered = leading + [column for column in table.columns if column not in leading]
    buffer = io.StringIO()
    table[ordered].to_csv(buffer, index=False)
    path = table_path(experiment)
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


#: the metrics of the notebooks' long tables (``grid_table``, ``curve_table``), by column name
GRID_METRICS = ("accuracy", "auc", "eer")


def grid_metric_values(metrics: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(metric, value)`` for accuracy, AUC and EER (:data:`GRID_METRICS`, read under their
    :data:`TABLE_METRICS` keys) of one pack's metrics (``VerificationResult.to_dict()``); a metric it lacks is
    left out. One loop for every notebook's long table."""
    for metric in GRID_METRICS:
        key = TABLE_METRICS[metric]
        if key in metrics:
            yield metric, metrics[key]
