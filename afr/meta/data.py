"""Episode data of meta-training: the training chips in memory (:class:`MamlData`) and the task batches of an
outer step (:func:`task_batches`), drawn by an :class:`~afr.meta.episodes.EpisodeSampler`.

Notebooks 04 (MAML), 05 (cross-domain) and 06 (ablations) meta-train on these.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from afr.data.collections import collection_pack, training_collections
from afr.data.embedded import load_embedded
from afr.data.verification import VerificationPack
from afr.eval.extract import chips_to_tensor
from afr.meta.episodes import EpisodeSampler
from afr.meta.maml import TaskBatch

__all__ = ["MamlData", "load_training_chips", "task_batches"]


@dataclass
class MamlData:
    """Training chips in memory with identity labels and collections, the target's test pack and, where a choice is
    made on it, the target's validation pack."""

    chips: list[np.ndarray]
    labels: np.ndarray
    collections: np.ndarray
    target_pack: VerificationPack
    image_size: int
    target_val_pack: VerificationPack | None = None

    def images(self, indices) -> torch.Tensor:
        return chips_to_tensor([self.chips[i] for i in indices], self.image_size)


def load_training_chips(embedded_root: str | None, target: str, with_validation: bool = False) -> MamlData:
    """The embedded benchmark's training pack in memory (chips, identity labels, collection of every chip) and the
    test pack of the ``target`` collection; ``with_validation``: its validation pack too (identities disjoint from
    its training and test identities)."""
    benchmark = load_embedded(embedded_root)
    dataset = benchmark.train_dataset()
    chips, labels = [], []
    for index in range(len(dataset)):
        image, label, _ = dataset[index]
        chips.append(image)
        labels.append(label)
    return MamlData(chips, np.asarray(labels), training_collections(benchmark),
                    collection_pack(benchmark, target, "test"), benchmark.config.image_size,
                    collection_pack(benchmark, target, "val") if with_validation else None)


def task_batches(data: MamlData, sampler: EpisodeSampler, count: int, step: int, rank: int = 0,
                 world_size: int = 1) -> list[TaskBatch]:
    """The ``count`` episodes of outer step ``step`` (deterministic in the step, so a resumed run draws the same);
    with ``world_size`` N > 1, rank ``rank``'s share: the ``rank``-th of N contiguous blocks of ``count / N``
    (episode ``step * count + j`` is the same episode whichever process draws it)."""
    if count % world_size or not 0 <= rank < world_size:
        raise ValueError(f"task_batches: {count} episodes cannot be split over {world_size} processes (rank {rank})")
    share = count // world_size
    first = step * count + rank * share
    batches = []
    for index in range(first, first + share):
        episode = sampler.episode(index)
        batches.append(TaskBatch(
            support_images=data.images(episode.support), support_labels=torch.as_tensor(episode.support_labels()),
            query_images=data.images(episode.query), query_labels=torch.as_tensor(episode.query_labels()),
            n_classes=len(episode.identities), domain=episode.collection))
    return batches
