"""Multi-process training under ``torchrun``: process-group setup, DDP wrapping and rank helpers.

``torchrun --nproc_per_node=N script.py`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed` reads them and
joins the process group (NCCL on CUDA, Gloo on CPU). Without those variables everything here
degrades to a single process: rank 0 of 1, ``barrier`` is a no-op and models are not wrapped.

The experiments' recipes run every rank through the same code and hand :func:`on_main` what only rank 0 may do:
decide (reuse a recorded run, refuse to replace one), write (adapters, records, tables), score the test packs; the
other ranks wait for it and get its result (or its error), so they return the same summary without writing.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(RuntimeError):
    """The torchrun environment is incomplete or the process group cannot be joined."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    """Whether a process group is active in this process."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in single-process runs): the process that logs and writes files."""
    return get_rank() == 0


def job_world_size() -> int:
    """The number of processes of this job: ``WORLD_SIZE`` (set by torchrun) once the process group is up, else
    the environment's ``WORLD_SIZE`` (1 when unset): known before the process group is joined."""
    if is_initialized():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE") or 1))


def job_rank() -> int:
    """This process's rank: the process group's, else the environment's ``RANK`` (0 when unset)."""
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK") or 0) if job_world_size() > 1 else 0


def job_local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK`` under torchrun; 0 in a single process): its GPU."""
    return int(os.environ.get("LOCAL_RANK") or 0) if job_world_size() > 1 else 0


def current_context() -> DistributedContext:
    """The context of the active process group (rank 0 of 1 when there is none)."""
    if not is_initialized():
        return DistributedContext()
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group described by torchrun's environment variables (idempotent).

    With ``WORLD_SIZE`` unset or 1 nothing is initialised and a single-process context returned.
    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``; with NCCL the process's
    CUDA device is set to ``LOCAL_RANK``.
    """
    if is_initialized():
        return current_context()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but {missing} are not set: launch with torchrun --nproc_per_node=N"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    except Exception as exc:  # pragma: no cover - depends on the cluster
        raise DistributedSetupError(
            f"rank {rank}/{world_size} could not join the {backend} process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}"
        ) from exc
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if not is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


#: how long a rank leaving on an error path waits for its peers before tearing the group down anyway
ERROR_PATH_WAIT_S = 10.0


def cleanup(wait_s: float = ERROR_PATH_WAIT_S) -> None:
    """Leave and destroy the process group, if any. On an error path the other ranks may be gone, or may still be
    raising the same error: with gloo a rank first waits up to ``wait_s`` seconds for its peers
    (``monitored_barrier``), because a rank that tears its connections down while a peer still uses them can abort
    that peer in gloo's teardown (``terminate called``, exit -6; seen twice in a 2-process test). A peer that never
    comes costs ``wait_s``, not a hang."""
    if not is_initialized():
        return
    if dist.get_backend() == "gloo" and wait_s > 0:
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=wait_s))
        except RuntimeError:
            pass  # a peer is gone or stuck elsewhere: tear down regardless
    dist.destroy_process_group()


def finish() -> None:
    """The end of a successful distributed run: wait for every rank, then destroy the process group (no-op without
    one). A rank that tears its connections down while a peer is still finishing can abort that peer (gloo:
    ``terminate called without an active exception``, seen once in a 2-process test), and a group left to the
    interpreter's exit can abort there. Every rank is here, so the one barrier suffices (no error-path wait)."""
    barrier()
    cleanup(wait_s=0)


def ensure_initialized() -> DistributedContext:
    """Join the job's process group now if torchrun started several processes (:func:`init_distributed`), so that
    collectives can run before the trainer is built (a recipe's "reuse or train?" decision, say)."""
    if job_world_size() > 1 and not is_initialized():
        return init_distributed()
    return current_context()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself in a single process. Every rank must call it
    at the same point; it returns once ``src`` has sent (so it is a barrier behind ``src``'s work)."""
    if not is_initialized() or get_world_size() == 1:
        return obj
    holder = [obj if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


class RankZeroError(RuntimeError):
    """Rank 0 failed in :func:`on_main` with an error that cannot be sent to the other ranks as it is."""


def on_main(function: Callable[[], Any]) -> Any:
    """Run ``function()`` on rank 0 only (the rank that decides, writes files, prints and scores test packs); every
    rank returns rank 0's result, or raises rank 0's error, once rank 0 is done. The other ranks wait meanwhile (a
    broadcast, which the process group's timeout bounds: 30 minutes by default). In a single process: ``function()``.

    So a decision (reuse a recorded run, refuse to replace one) is taken once and the same on every rank, and a
    record or adapter is written once. Every rank must call it at the same point. The result must be picklable
    (a value that is not is replaced by ``None`` on the other ranks); so must the error (else :class:`RankZeroError`
    with its message is raised there)."""
    ensure_initialized()
    if not is_initialized() or get_world_size() == 1:
        return function()
    payload: Any = None
    error: BaseException | None = None
    if get_rank() == 0:
        try:
            value = function()
            payload = ("value", value)
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then re-raised here
            error = exc
            payload = ("error", exc)
        try:
            pickle.dumps(payload)
        except Exception:  # noqa: BLE001
            if error is None:
                payload = ("value", None)
            else:
                payload = ("error", RankZeroError(f"on rank 0: {type(error).__name__}: {error}"))
    received = broadcast_object(payload)
    if get_rank() == 0:
        if error is not None:
            raise error
        return value
    kind, value = received
    if kind == "error":
        raise value
    return value


def wrap_model(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` when a process group is active, else ``model`` itself.

    The model must already be on ``device``; DDP broadcasts rank 0's parameters and buffers.
    """
    if not is_initialized() or get_world_size() == 1:
        return model
    if device.type == "cuda":
        return DistributedDataParallel(
            model, device_ids=[device.index], output_device=device.index, find_unused_parameters=find_unused_parameters
        )
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one rank: one all_reduce of a scalar (in a single process,
    ``flag`` itself).

    Every rank must call it at the same point; all then get the same answer, so they can all stop
    together instead of one rank raising while the others wait in the next collective.
    """
    if not is_initialized() or get_world_size() == 1:
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Per name, the mean of the ranks' ``values`` over the ranks that report that name.

    One ``all_gather_object``, so ranks may report different names (e.g. a loss term that only
    some ranks' batches produce) without a mismatched collective. In a single process: ``values``.
    """
    if not is_initialized() or get_world_size() == 1:
        return {name: float(value) for name, value in values.items()}
    gathered = all_gather_objects({name: float(value) for name, value in values.items()})
    names = list(dict.fromkeys(name for rank_values in gathered for name in rank_values))
    means = {}
    for name in names:
        reported = [rank_values[name] for rank_values in gathered if name in rank_values]
        means[name] = sum(reported) / len(reported)
    return means


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_initialized() or get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
