"""Where things live: the project tree and the read-only ``shared`` folder of real data and weights.

The shared folder defaults to ``../shared`` beside the project root and is overridden with the
``AFR_SHARED`` environment variable. Nothing in it is ever copied into the project.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class MissingResourceError(FileNotFoundError):
    """A file or folder the caller needs is not on disk; the message names it and how to get it."""


def shown_path(path: str | Path) -> str:
    """``path`` as notebooks and messages print it: relative to the project root when inside it (so that committed
    notebook outputs hold no machine path), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(PROJECT_ROOT).as_posix() or "."
    except ValueError:
        return str(path)


def shared_root() -> Path:
    """The folder holding the real face images and weights (``$AFR_SHARED`` or ``../shared``)."""
    return Path(os.environ.get("AFR_SHARED", PROJECT_ROOT.parent / "shared")).expanduser().resolve()


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder; raises MissingResourceError naming it if it does not exist."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        raise MissingResourceError(
            f"{path} not found: the shared data/weights folder is expected at {shared_root()} "
            "(set AFR_SHARED to point elsewhere)"
        )
    return path


def faces_root() -> Path:
    """``shared/data/faces``: ORL, Yale, deepface and the thermal sets."""
    return shared_path("data", "faces")


def weights_root() -> Path:
    """``shared/weights``: dlib ResNet-29 and MTCNN."""
    return shared_path("weights")


def processed_root() -> Path:
    """``data/processed`` in the project tree (git-ignored); ``$AFR_DATA`` overrides it."""
    return Path(os.environ.get("AFR_DATA", PROJECT_ROOT / "data" / "processed")).expanduser().resolve()


def _project_dir(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable, PROJECT_ROOT / default)).expanduser().resolve()


def results_root() -> Path:
    """``results/`` in the project tree, where experiments write JSON records and tables; ``$AFR_RESULTS``
    overrides it (``make test`` points it at a scratch folder so that tests never touch committed results)."""
    return _project_dir("AFR_RESULTS", "results")


def tables_root() -> Path:
    """``results/tables``: one long CSV per experiment (one row per method, domain, metric and seed)."""
    return results_root() / "tables"


def figures_root() -> Path:
    """``figures/`` in the project tree; ``$AFR_FIGURES`` overrides it."""
    return _project_dir("AFR_FIGURES", "figures")


def runs_root() -> Path:
    """``runs/`` (git-ignored): one folder per training run (TensorBoard, checkpoints, adapter);
    ``$AFR_RUNS`` overrides it."""
    return _project_dir("AFR_RUNS", "runs")
