"""The meta-learned LoRA start of notebooks 04, 05 and 06: a pretrained backbone with LoRA of rank r
(``alpha = r``), its LoRA tensors meta-trained by :func:`~afr.meta.maml.meta_train` on episodes of the training
chips, its adapter saved under the run folder.

One function builds it for all three, so that the same settings compute the same start bit for bit: the seed is set
(:func:`~afr.train.seed_everything`) before the backbone is created, the LoRA tensors are drawn, the model is moved
to the device (channels-last first where asked), and only then meta-training begins.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from afr.adapters.lora import LoraSettings, apply_lora, save_adapter
from afr.meta.data import MamlData, task_batches
from afr.meta.episodes import EpisodeSampler
from afr.meta.maml import MetaConfig, MetaTrainResult, meta_train
from afr.models import create_backbone
from afr.models.layout import fast_layout
from afr.train import distributed, seed_everything

__all__ = ["MetaStart", "lora_backbone", "meta_learned_start"]

#: LoRA targets: None (the backbone's defaults), names, or a function of the created backbone giving names
Targets = Sequence[str] | Callable[[nn.Module], Sequence[str]] | None


@dataclass
class MetaStart:
    """A start: the backbone with its (meta-trained) LoRA, the meta-training result and the saved adapter (both
    None when nothing was meta-trained)."""

    backbone: nn.Module
    result: MetaTrainResult | None
    adapter: Path | None


def lora_backbone(backbone_name: str, weights: str | None, rank: int, targets: Targets = None,
                  device: torch.device | str = "cpu", channels_last: bool = False) -> nn.Module:
    """``create_backbone`` with LoRA of rank ``rank``, ``alpha = rank`` (:meth:`LoraSettings.square`) on
    ``targets``, moved to ``device`` (its conv weights channels-last first with ``channels_last``,
    :func:`~afr.models.layout.fast_layout`). LoRA's ``A`` is drawn from the global RNG: seed first."""
    backbone = create_backbone(backbone_name, weights)
    if callable(targets):
        targets = targets(backbone)
    backbone = apply_lora(backbone, LoraSettings.square(rank, targets))
    (fast_layout(backbone) if channels_last else backbone).to(device)
    return backbone


def meta_learned_start(backbone_name: str, weights: str | None, rank: int, data: MamlData,
                       sampler: EpisodeSampler | None, config: MetaConfig | None, run_dir: str | Path, *, seed: int,
                       device: torch.device | str = "cpu", targets: Targets = None, channels_last: bool = False,
                       resume: bool = False, progress: bool = True, overwrite: bool = False,
                       data_parallel: bool = False) -> MetaStart:
    """Seed with ``seed``, build :func:`lora_backbone`, meta-train its LoRA tensors into ``run_dir`` on
    ``config.tasks_per_step`` episodes of ``sampler`` per outer step (:func:`~afr.meta.data.task_batches` of
    ``data``), and save the adapter to ``run_dir / "adapter"``.

    ``config`` None: no meta-training (LoRA's own start, ``B = 0``: the pretrained backbone), nothing saved.
    ``resume`` / ``overwrite``: as :func:`~afr.meta.maml.meta_train`. ``data_parallel`` (every rank of a torchrun
    job calls it): each outer step's episodes are split over the ranks (:func:`~afr.meta.maml.meta_train`), every
    rank ends with the same adapter, and rank 0 alone saves it (the others get its path).
    """
    seed_everything(seed)
    backbone = lora_backbone(backbone_name, weights, rank, targets, device, channels_last)
    if config is None:
        return MetaStart(backbone, None, None)
    if sampler is None:
        raise ValueError("meta_learned_start: meta-training (a config) needs an episode sampler")
    def sample(step: int, rank: int = 0, world_size: int = 1):
        return task_batches(data, sampler, config.tasks_per_step, step, rank, world_size)

    result = meta_train(backbone, sample, config, run_dir, resume=resume, progress=progress, overwrite=overwrite,
                        data_parallel=data_parallel)
    save = lambda: save_adapter(backbone, Path(run_dir) / "adapter")  # noqa: E731
    adapter = distributed.on_main(save) if data_parallel else save()
    return MetaStart(backbone, result, adapter)
