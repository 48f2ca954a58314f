"""A resumable, DDP-aware batch sampler, and per-batch data seeds for exact resume with workers.

Each epoch's order is a pure function of ``(seed, epoch)`` (``torch.randperm`` with its own
``torch.Generator``), so it never touches the global RNG and a resumed run can rebuild it exactly
and skip the batches it already trained on. Under ``torchrun`` every rank sees the same permutation
and takes every ``num_replicas``-th index of it (as ``DistributedSampler`` does), so the ranks'
batches are disjoint and, concatenated, cover the same samples a single process would see with a
``num_replicas`` times larger batch.

A dataset that draws random numbers (python ``random``, numpy's or torch's global RNG) gets them,
through :class:`SeededBatches` and :class:`SeededFetch`, from generators re-seeded before every
batch with :func:`batch_seed` ``(seed, epoch, batch, rank)``: a pure function of the batch's place
in the run. So its samples do not depend on which DataLoader worker fetched the batch, on how many
workers there are, or on where a resumed run restarted the epoch, and the fetch never consumes the
main process's RNG streams (with ``num_workers=0`` they are saved and restored around it). A
dataset with a generator of its own should seed it from ``torch.initial_seed()`` when fetching
(not from ``get_worker_info().seed``, which depends on the worker).
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


class ResumableSampler(Sampler[list[int]]):
    """Yields lists of dataset indices (one per batch); use as ``DataLoader(batch_sampler=...)``.

    ``set_epoch(epoch, start_batch)`` selects the epoch and the first batch to yield, so a run
    interrupted after ``k`` batches of an epoch continues with batch ``k`` of the same order.
    ``drop_last`` drops the tail that does not fill a batch (and the samples that would make the
    ranks uneven); otherwise the last batch is short and ranks are padded by wrapping around.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = True,
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        if self.num_batches == 0:
            raise ValueError(
                f"dataset of {self.dataset_size} samples gives no full batch of {self.batch_size} "
                f"on each of {self.num_replicas} process(es) (drop_last={drop_last})"
            )

    @property
    def samples_per_replica(self) -> int:
        if self.drop_last:
            return self.dataset_size // self.num_replicas
        return -(-self.dataset_size // self.num_replicas)

    @property
    def num_batches(self) -> int:
        """Batches per epoch on this rank (independent of ``start_batch``)."""
        if self.drop_last:
            return self.samples_per_replica // self.batch_size
        return -(-self.samples_per_replica // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_batch`` batches."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in [0, {self.num_batches}], got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch`` in order (before batching and skipping)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.samples_per_replica * self.num_replicas
        if total <= len(order):
            order = order[:total]
        else:  # pad by wrapping around so that every rank gets the same number of samples
            order = (order * (-(-total // len(order))))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.epoch_indices(self.epoch)
        for batch in range(self.start_batch, self.num_batches):
            yield indices[batch * self.batch_size : (batch + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


# ------------------------------------------------------------------------------ per-batch data seeds
def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The 64-bit seed of the data RNGs for ``batch`` of ``epoch`` on ``rank`` (a pure function)."""
    entropy = [seed % 2**64, epoch, batch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed python ``random``, numpy's and torch's CPU global RNGs with ``seed`` for the block, then
    put back the states they had (CUDA generators are not touched)."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class SeededBatches(Sampler[tuple[int, list[int]]]):
    """``DataLoader(batch_sampler=...)`` over ``sampler``'s current epoch: yields ``(seed, indices)``
    with ``seed = batch_seed(sampler.seed, epoch, batch, rank)``, starting at ``sampler.start_batch``.
    Pair it with :class:`SeededFetch`."""

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        s = self.sampler
        for batch, indices in enumerate(s, start=s.start_batch):
            yield batch_seed(s.seed, s.epoch, batch, s.rank), indices

    def __len__(self) -> int:
        return len(self.sampler)


class SeededFetch(Dataset):
    """Wraps a map-style dataset so that a ``(seed, indices)`` batch from :class:`SeededBatches` is
    fetched under :func:`seeded_global_rngs` ``(seed)``; returns the list of samples."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, batch: tuple[int, Sequence[int]]) -> list[Any]:
        seed, indices = batch
        with seeded_global_rngs(seed):
            return [self.dataset[index] for index in indices]
