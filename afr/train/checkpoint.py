"""Atomic training checkpoints, their rotation, and the RNG state a bitwise resume needs.

A checkpoint is one ``torch.save`` file ``checkpoint-<step:08d>.pt`` holding a plain dict (loadable
with ``weights_only=True``): model state (trainable parameters + buffers, or the full state),
optimizer, scheduler, grad-scaler, step, epoch, batch position in the epoch, the RNG states of
every rank (python ``random``, numpy, torch CPU and CUDA) and the training config. It is written
to a temporary file in the same folder, fsynced and moved into place with ``os.replace``, so a run
killed at any moment leaves either the previous checkpoint or the new one, never half a file.
"""
from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from afr.io import atomic_writer

#: bumped when the layout of the saved dict changes
CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "model_is_full", "optimizer", "scheduler", "step", "epoch", "batch_in_epoch")
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
_TEMP_PREFIX = ".tmp-checkpoint-"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated or does not match the model; the message names it."""


# --------------------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The current process's RNG states, as tensors/ints only (safe for ``weights_only`` loading)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples all the way down; lists may come back from serialisers."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


# ---------------------------------------------------------------------------------- model state
def _frozen_parameter_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def model_state(model: nn.Module, full: bool = False) -> dict[str, torch.Tensor]:
    """``model.state_dict()``, or (``full=False``) without the frozen parameters (buffers kept)."""
    state = model.state_dict()
    if full:
        return state
    frozen = _frozen_parameter_names(model)
    return {name: tensor for name, tensor in state.items() if name not in frozen}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], full: bool, source: str = "checkpoint") -> None:
    """Load a :func:`model_state` dict; a mismatch raises CheckpointError naming ``source``."""
    try:
        result = model.load_state_dict(state, strict=full)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: model state does not match the model: {exc}") from exc
    if not full:
        missing = set(result.missing_keys) - _frozen_parameter_names(model)
        if result.unexpected_keys or missing:
            raise CheckpointError(
                f"{source}: model state does not match the model "
                f"(unexpected keys {sorted(result.unexpected_keys)[:5]}, missing trainable keys {sorted(missing)[:5]})"
            )


# ----------------------------------------------------------------------------------- files
def checkpoint_path(directory: str | Path, step: int) -> Path:
    """``directory/checkpoint-<step:08d>.pt``."""
    return Path(directory) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest (lowest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or ``None``."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temporary files left by a save that was killed half-way; returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(_TEMP_PREFIX)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(state: dict[str, Any], path: str | Path, keep: int | None = None) -> Path:
    """Write ``state`` to ``path`` atomically; then keep only the newest ``keep`` checkpoints there.

    See :func:`afr.io.atomic_writer`: the bytes go to a temporary file in the same folder, are
    fsynced and moved over ``path`` with ``os.replace``; a failed save leaves no temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, temp_prefix=_TEMP_PREFIX) as handle:
        torch.save(state, handle)
    if keep is not None:
        prune_checkpoints(path.parent, keep)
    return path


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints in ``directory``; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = list_checkpoints(directory)[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, without torch's advice to load with ``weights_only=False``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_tensors_only(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and never suggest loading it unsafely.

    A file holding objects other than tensors and plain data is not a trusted ``what`` of this project: it is
    refused with :class:`CheckpointError` (loading it with ``weights_only=False`` would run whatever code it
    carries, so the message does not suggest it); a truncated or damaged file is a CheckpointError naming it too.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a trusted {what} of this project: it holds objects other than tensors and plain data "
            "(or is corrupt), and such files are not loaded; use a file this project wrote"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for truncated or damaged files
        raise CheckpointError(f"{path} is not a readable {what} (corrupt or truncated): {_first_line(exc)}") from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises FileNotFoundError if ``path`` does not exist and CheckpointError (naming the file) if it
    is truncated, corrupt or not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = load_tensors_only(path, map_location, "training checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an AdaptFace training checkpoint (missing {missing})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']}, expected {CHECKPOINT_FORMAT}")
    return state
