"""Resumable, DDP-aware batch samplers, and per-batch data seeds for exact resume with workers.

:class:`ResumableSampler` shuffles the samples; :class:`IdentityBatchSampler` builds batches of
``P`` identities x ``M`` images, mixing domains (for contrastive losses that need positives). Both
share the resume interface below (``set_epoch(epoch, start_batch)``, ``num_batches``, ``seed``,
``epoch``, ``start_batch``, ``rank``, ``num_replicas``).

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

    def __init__(self, sampler: ResumableSampler | IdentityBatchSampler) -> None:
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


# ------------------------------------------------------------------------------ identity batches
class _Cycle:
    """Endless draws without replacement from ``items``: one shuffled pass after another.

    ``take_one(avoid)`` returns the pass's next item not in ``avoid`` (moving it forward, so the
    skipped items stay in the pass); when the pass has none left, a new shuffled pass starts.
    """

    def __init__(self, items: Sequence[int], rng: np.random.Generator) -> None:
        self.items = list(items)
        self.rng = rng
        self.order: list[int] = []
        self.position = 0

    def take_one(self, avoid: set[int] | frozenset[int] = frozenset()) -> int:
        for _ in range(2):
            for j in range(self.position, len(self.order)):
                if self.order[j] not in avoid:
                    order, i = self.order, self.position
                    order[i], order[j] = order[j], order[i]
                    self.position += 1
                    return order[i]
            self.order = [self.items[i] for i in self.rng.permutation(len(self.items)).tolist()]
            self.position = 0
        raise RuntimeError("every item of the cycle is excluded")  # callers prevent this

    def take(self, count: int) -> list[int]:
        """``count`` (``<= len(items)``) distinct items."""
        taken: list[int] = []
        for _ in range(count):
            taken.append(self.take_one(set(taken)))
        return taken


class _IdentityImages:
    """One identity's images during an epoch: a :class:`_Cycle` per domain, domains taken in turn."""

    def __init__(self, by_domain: dict[int, np.ndarray], rng: np.random.Generator) -> None:
        domains = sorted(by_domain)
        self.domains = [domains[i] for i in rng.permutation(len(domains)).tolist()]
        self.cycles = {domain: _Cycle(by_domain[domain].tolist(), rng) for domain in self.domains}
        self.sizes = {domain: len(by_domain[domain]) for domain in self.domains}
        self.all = np.concatenate([by_domain[domain] for domain in domains])
        self.draws = 0
        self.rng = rng

    def draw(self, count: int) -> list[int]:
        """``count`` images: distinct ones spread over the domains round-robin (the starting domain
        turns with every draw), then, if the identity has fewer than ``count``, repeats drawn
        uniformly with replacement from all its images."""
        distinct = min(count, len(self.all))
        per_domain = dict.fromkeys(self.domains, 0)
        turn = self.draws
        placed = 0
        while placed < distinct:
            domain = self.domains[turn % len(self.domains)]
            if per_domain[domain] < self.sizes[domain]:
                per_domain[domain] += 1
                placed += 1
            turn += 1
        start = self.draws % len(self.domains)
        self.draws += 1
        images: list[int] = []
        for domain in self.domains[start:] + self.domains[:start]:
            images.extend(self.cycles[domain].take(per_domain[domain]))
        if distinct < count:
            images.extend(self.rng.choice(self.all, size=count - distinct, replace=True).tolist())
        return images


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of ``P = batch_size / images_per_identity`` distinct identities x ``M = images_per_identity``
    images each (identity after identity), for losses that need positives in the batch (supervised
    InfoNCE); use as ``DataLoader(batch_sampler=...)`` or through :class:`SeededBatches`.

    **Identities.** With ``domains``, identities are grouped into strata by the set of domains they
    have images in (on the embedded benchmark: the controlled + low-quality identities, and the
    thermal ones); each batch visits the strata in a freshly shuffled order, one identity at a time
    in turn, so a batch holds identities of ``min(P, number of strata)`` strata, in equal shares
    (small strata are therefore over-represented relative to their size). Within a stratum
    identities come in shuffled passes: none repeats before all of the stratum have been drawn.
    Without ``domains`` there is one stratum (plain ``P x K`` sampling).

    **Images.** An identity drawn contributes ``M`` images spread over its domains round-robin
    (e.g. 2 controlled + 2 low-quality), each domain's images in shuffled passes across the epoch.
    An identity with fewer than ``M`` images contributes all of them, and the remaining slots are
    drawn uniformly **with replacement** from its images (so the batch holds repeats).

    **Epochs, resume, DDP.** An epoch has as many batches as :class:`ResumableSampler` with
    ``drop_last=True`` gives (``len(labels) // num_replicas // batch_size`` per rank), so it shows
    about as many images as the dataset holds. It is a pure function of ``(seed, epoch)`` (a numpy
    generator of its own; the global RNGs are not touched): ``set_epoch(epoch, start_batch)``
    selects it and skips its first ``start_batch`` batches, exactly. All ranks build the same
    stream of batches and rank ``r`` takes batches ``r, r + R, r + 2R, ...`` (``R = num_replicas``),
    so batch ``b`` of rank ``r`` is batch ``b * R + r`` of a single process with the same seed, and
    the ranks' batches of one step hold different identities as long as the strata have enough.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        images_per_identity: int = 4,
        *,
        domains: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if images_per_identity < 1:
            raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
        if batch_size < 1 or batch_size % images_per_identity:
            raise ValueError(
                f"batch_size must be a positive multiple of images_per_identity={images_per_identity}, got {batch_size}"
            )
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if domains is not None:
            domains = np.asarray(domains.cpu() if isinstance(domains, torch.Tensor) else domains).reshape(-1)
            if domains.shape != labels.shape:
                raise ValueError(f"{labels.size} labels but {domains.size} domains")
        self.dataset_size = int(labels.size)
        self.batch_size = int(batch_size)
        self.images_per_identity = int(images_per_identity)
        self.identities_per_batch = self.batch_size // self.images_per_identity
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.start_batch = 0

        # identity -> domain -> its dataset indices (ascending); strata of identities by their domain set
        domain_of = domains.astype(np.int64) if domains is not None else np.zeros(labels.size, dtype=np.int64)
        self._images: dict[int, dict[int, np.ndarray]] = {}
        for index in np.lexsort((np.arange(labels.size), domain_of, labels)).tolist():
            by_domain = self._images.setdefault(int(labels[index]), {})
            by_domain.setdefault(int(domain_of[index]), []).append(index)  # type: ignore[arg-type]
        strata: dict[tuple[int, ...], list[int]] = {}
        for identity, by_domain in self._images.items():
            self._images[identity] = {d: np.asarray(ix, dtype=np.int64) for d, ix in by_domain.items()}
            strata.setdefault(tuple(sorted(by_domain)), []).append(identity)
        self.strata: list[list[int]] = [sorted(strata[key]) for key in sorted(strata)]
        self.num_identities = len(self._images)
        if self.num_identities < self.identities_per_batch:
            raise ValueError(
                f"{self.num_identities} identities cannot fill a batch of {self.identities_per_batch} distinct "
                f"identities x {self.images_per_identity} images (batch_size={self.batch_size})"
            )
        if self.num_batches == 0:
            raise ValueError(
                f"dataset of {self.dataset_size} samples gives no full batch of {self.batch_size} "
                f"on each of {self.num_replicas} process(es)"
            )
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def num_batches(self) -> int:
        """Batches per epoch on this rank (independent of ``start_batch``)."""
        return self.dataset_size // self.num_replicas // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's batches and skip its first ``start_batch`` of them."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in [0, {self.num_batches}], got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _stream(self, epoch: int) -> list[list[int]]:
        """The epoch's batches of all ranks together, in order (a pure function of ``(seed, epoch)``)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**64, epoch % 2**64, 0x1DE]))
        strata = [_Cycle(stratum, rng) for stratum in self.strata]
        images: dict[int, _IdentityImages] = {}
        batches = []
        for _ in range(self.num_batches * self.num_replicas):
            order = rng.permutation(len(strata)).tolist()
            chosen: list[int] = []
            taken = [0] * len(strata)
            while len(chosen) < self.identities_per_batch:
                for s in order:
                    if len(chosen) == self.identities_per_batch:
                        break
                    if taken[s] < len(self.strata[s]):
                        chosen.append(strata[s].take_one(set(chosen)))
                        taken[s] += 1
            batch: list[int] = []
            for identity in chosen:
                if identity not in images:
                    images[identity] = _IdentityImages(self._images[identity], rng)
                batch.extend(images[identity].draw(self.images_per_identity))
            batches.append(batch)
        self._cache = (epoch, batches)
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` in order (before skipping)."""
        return [list(batch) for batch in self._stream(epoch)[self.rank :: self.num_replicas]]

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch`` in order (the batches concatenated, before skipping)."""
        return [index for batch in self.epoch_batches(epoch) for index in batch]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch
