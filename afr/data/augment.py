"""Training-time augmentation for aligned face chips, as FRoundation trains: flip + RandAugment.

Built on kornia so it runs on batches, on the training device, without torchvision. RandAugment's
magnitude follows the torchvision/kornia scale of 0–30 (FRoundation: 4 operations, magnitude 16).

FRoundation's RandAugment (timm/torchvision) draws its operations for every image, whereas
kornia's ``RandAugment`` draws one set of operations for the whole batch. :class:`FaceAugment`
draws them per image: each image gets ``n`` distinct operations of kornia's default policy, in
a random order, and at each of the ``n`` positions every operation runs once on the images that
drew it (a single-operation kornia ``RandAugment``, so magnitudes and per-image signs are
kornia's). A batch thus costs at most ``n x 15`` operation calls whatever its size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.augmentation import RandomHorizontalFlip
from kornia.augmentation.auto import RandAugment
from kornia.augmentation.auto.rand_augment.rand_augment import default_policy
from torch import nn

#: RandAugment's candidate operations (kornia's default policy, as torchvision's)
RANDAUGMENT_POLICY = tuple(default_policy)


@dataclass(frozen=True)
class AugmentSettings:
    """What ``FaceAugment`` applies: a horizontal flip with ``flip_p`` and RandAugment(n, m)."""

    flip_p: float = 0.5
    randaugment_ops: int = 4
    randaugment_magnitude: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if not 0 <= self.randaugment_ops <= len(RANDAUGMENT_POLICY):
            raise ValueError(f"randaugment_ops must be in [0, {len(RANDAUGMENT_POLICY)}], got {self.randaugment_ops}")
        if self.randaugment_ops and not 0 < self.randaugment_magnitude < 30:
            raise ValueError(f"randaugment_magnitude must be in (0, 30), got {self.randaugment_magnitude}")


class FaceAugment(nn.Module):
    """Batch augmentation: ``(B, 3, H, W)`` floats in ``[0, 1]`` in, same shape and range out.

    In training mode: a horizontal flip drawn per image, then RandAugment with its operations
    drawn per image (see the module docstring); every draw comes from torch's global RNG, so
    ``torch.manual_seed`` makes it repeatable. In eval mode the images pass through unchanged.
    """

    def __init__(self, settings: AugmentSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or AugmentSettings()
        self.flip = RandomHorizontalFlip(p=self.settings.flip_p)
        magnitude = self.settings.randaugment_magnitude
        #: one single-operation RandAugment per candidate operation, in RANDAUGMENT_POLICY's order
        self.operations = nn.ModuleList(
            [RandAugment(n=1, m=magnitude, policy=[subpolicy]) for subpolicy in RANDAUGMENT_POLICY]
            if self.settings.randaugment_ops
            else []
        )

    def draw_policies(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, n)`` indices into :attr:`operations`: each row ``n`` distinct operations,
        in the order they are applied, drawn uniformly for each image."""
        order = torch.rand(batch_size, len(self.operations)).argsort(dim=1)
        return order[:, : self.settings.randaugment_ops]

    def apply_policies(self, images: torch.Tensor, policies: torch.Tensor) -> torch.Tensor:
        """Image ``i`` through the operations ``policies[i]`` in order; at each position every
        operation runs once, on the sub-batch of images that drew it there."""
        out = images.clone()
        for position in range(policies.shape[1]):
            drawn = policies[:, position]
            for operation in drawn.unique().tolist():
                chosen = (drawn == operation).nonzero().squeeze(1).to(out.device)
                out[chosen] = self.operations[operation](out[chosen])
        return out

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(augmented, clean)``: the augmented batch (what :meth:`forward` returns, from the same random
        draws) and its flip-only view, the same flip of each image without RandAugment (what a DA-LoRA router
        trained with ``router_view="clean"`` reads, :class:`~afr.models.domain_aware.DomainAwareRecognitionModel`).
        In eval mode both are the images unchanged."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FaceAugment expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
        if not self.training:
            return images, images
        flipped = self.flip(images)
        augmented = flipped
        if self.settings.randaugment_ops:
            augmented = self.apply_policies(flipped, self.draw_policies(images.shape[0]))
        return augmented.clamp(0.0, 1.0), flipped.clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.views(images)[0]
