"""Training pieces the experiments share: class-centre start, optimizer groups, the engine's config."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from afr.train import TrainConfig, collate_samples

__all__ = ["class_mean_embeddings", "evaluation_device", "frozen_backbone", "initialise_centres", "optimizer_groups",
           "per_process_batch", "train_config", "training_augment"]


def evaluation_device(settings: Any) -> torch.device:
    """Where evaluations run: the training device, by the training engine's rule for ``"auto"`` (under torchrun each
    process's own, ``cuda:LOCAL_RANK``)."""
    return TrainConfig(device=settings.device).resolve_device()


@torch.no_grad()
def class_mean_embeddings(backbone: nn.Module, dataset, batch_size: int, device: torch.device,
                          num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain (no flip, no augmentation) embeddings of every training image and their identity labels."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_samples)
    was_training = backbone.training
    backbone.eval().to(device)
    embeddings, labels = [], []
    for batch in loader:
        embeddings.append(backbone(batch["images"].to(device)).float().cpu())
        labels.append(batch["labels"])
    backbone.train(was_training)
    return torch.cat(embeddings), torch.cat(labels)


def initialise_centres(model: nn.Module, dataset, settings: Any) -> None:
    """The embedding space training starts from, measured once under the still unadapted backbone.

    ``settings.centre_embeddings``: the backbone subtracts the mean unit embedding of the training images
    (:mod:`afr.models.centring`); ``settings.head_init == "class-mean"``: class centres = the mean (centred) unit
    embedding of each identity; ``"random"`` keeps the head's own N(0, 0.01) draw."""
    from afr.models.centring import centre_embeddings, mean_unit_embedding

    centred = getattr(settings, "centre_embeddings", False)
    if settings.head_init != "class-mean" and not centred:
        return
    embeddings, labels = class_mean_embeddings(model.backbone, dataset, 64, evaluation_device(settings),
                                               settings.num_workers)
    if centred:
        centre = mean_unit_embedding(embeddings)
        centre_embeddings(model.backbone, centre)
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1) - centre
    if settings.head_init == "class-mean":
        model.head.initialise_from_embeddings(embeddings, labels)


def frozen_backbone(settings: Any, train_dataset=None, centre: torch.Tensor | None = None) -> nn.Module:
    """The pretrained backbone without adapters (the zero-shot reference), centred as the runs are when
    ``settings.centre_embeddings``: by ``centre`` (an adapted run's own) or by the mean unit embedding of
    ``train_dataset`` under it, the same centre the runs measure."""
    from afr.models import create_backbone
    from afr.models.centring import centre_embeddings, mean_unit_embedding

    backbone = create_backbone(settings.backbone, settings.weights)
    if getattr(settings, "centre_embeddings", False):
        if centre is None:
            if train_dataset is None:
                raise ValueError("a centred zero-shot backbone needs the training images or the runs' centre")
            embeddings, _ = class_mean_embeddings(backbone, train_dataset, 64, evaluation_device(settings),
                                                  settings.num_workers)
            centre = mean_unit_embedding(embeddings)
        centre_embeddings(backbone, centre)
    return backbone


def training_augment(settings: Any) -> nn.Module | None:
    """The training images' augmentation: flip + RandAugment(``randaugment_ops``, 16) with ``augment``, else None."""
    if not settings.augment:
        return None
    from afr.data.augment import AugmentSettings, FaceAugment

    return FaceAugment(AugmentSettings(randaugment_ops=getattr(settings, "randaugment_ops", 4)))


def optimizer_groups(model: nn.Module, settings: Any) -> list[dict[str, Any]]:
    """AdamW groups: the backbone's trainable (adapter) parameters at ``lr``, the class centres at ``head_lr``."""
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "weight_decay": settings.weight_decay},
        {"params": list(model.head.parameters()), "lr": settings.head_lr, "weight_decay": settings.weight_decay},
    ]


def per_process_batch(batch_size: int) -> int:
    """Each process's share of the global ``batch_size`` (the settings' ``batch_size`` is the images of one optimizer
    step over all processes): ``batch_size / WORLD_SIZE``, which must be whole (the settings check it first)."""
    from afr.experiments.settings.base import job_world_size
    from afr.train.config import ConfigError

    world = job_world_size()
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} (the global batch) does not split over {world} processes")
    return batch_size // world


def train_config(settings: Any, output_dir: str, notes: dict[str, Any], **options: Any) -> TrainConfig:
    """The engine's :class:`~afr.train.TrainConfig` for an experiment's settings (``options`` add or override).

    The settings' ``batch_size`` is the global batch; under torchrun each process trains on its share of it
    (:func:`per_process_batch`), so an optimizer step sees the same number of images on any number of GPUs."""
    values = dict(
        epochs=settings.epochs, batch_size=per_process_batch(settings.batch_size), lr=settings.lr, weight_decay=settings.weight_decay,
        warmup_epochs=settings.warmup_epochs, num_workers=settings.num_workers, seed=settings.seed,
        output_dir=output_dir, device=settings.device, overwrite=settings.overwrite, progress=settings.progress,
        log_every=5, notes=notes, precision=getattr(settings, "precision", "auto"),
    )
    return TrainConfig(**{**values, **options})
