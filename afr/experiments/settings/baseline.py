"""Notebook 02's settings (``python -m afr baseline``): zero-shot vs LoRA + margin loss. No torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from afr.experiments.settings.base import ExperimentSettings, setting
from afr.experiments.settings.fields import (FITTED_RECIPE_UNRECORDED, BackboneFields, FittedTrainingFields,
                                             FullProfileFields, RunFields)

__all__ = ["BaselineSettings", "PUBLISHED_FROUNDATION"]

#: Published FRoundation numbers (Chettaoui et al., arXiv:2410.23831, abstract), reference rows only:
#: verification accuracy in %, averaged over LFW, CALFW, CPLFW, CFP-FP and AgeDB-30.
PUBLISHED_FROUNDATION = [
    {"model": "DINOv2 ViT-S/14", "setting": "no fine-tuning (zero-shot)", "training_data": "none", "average": 64.70},
    {"model": "DINOv2 ViT-S/14", "setting": "LoRA + CosFace", "training_data": "CASIA-WebFace 1K ids", "average": 87.10},
    {"model": "ViT-S", "setting": "trained from scratch", "training_data": "CASIA-WebFace 1K ids", "average": 69.96},
    {"model": "DINOv2 ViT-L", "setting": "LoRA + CosFace", "training_data": "large-scale", "average": 96.03},
    {"model": "CLIP ViT-L", "setting": "LoRA + CosFace", "training_data": "large-scale", "average": 95.59},
]


@dataclass
class BaselineSettings(ExperimentSettings, RunFields, FittedTrainingFields, FullProfileFields, BackboneFields):
    """One baseline run (notebook 02, ``python -m afr baseline``): zero-shot vs LoRA + margin loss.

    Fields: :class:`BackboneFields`, :class:`FullProfileFields`, :class:`FittedTrainingFields` (the fitted recipe of
    notebook 03 by default: centred embeddings, class-mean centres, no augmentation; the first runs trained with random
    centres and RandAugment(4, 16) and did not fit), :class:`RunFields`, then its own (the LoRA and margin details, the
    validation split, the seed)."""

    experiment: ClassVar[str] = "baseline"
    DATA_PARALLEL: ClassVar[bool] = True  # torchrun: rank 0 decides and writes, batch_size is the global batch
    TABLE_SETTINGS: ClassVar[tuple[str, ...]] = (
        "data_profile", "backbone", "rank", "margin", "head_init", "epochs", "batch_size", "lr", "head_lr",
        "score_test")
    #: added after the baseline runs were recorded (at auto / off): in the tag's digest only when not at the default
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("precision", "centre_embeddings", "randaugment_ops")
    ADDED_TABLE_SETTINGS: ClassVar[tuple[str, ...]] = ("centre_embeddings", "randaugment_ops")
    #: ``centre_embeddings`` was added at off: the runs recorded before it keep their tags
    UNRECORDED_VALUES: ClassVar[dict[str, Any]] = FITTED_RECIPE_UNRECORDED

    rank: int = setting(8, "LoRA rank r (FRoundation: 16)")
    output_dir: str | None = setting(None, "run folder (TensorBoard, checkpoints, adapter); default runs/<tag>")
    resume: bool = setting(False, "continue the run folder's unfinished run from its last checkpoint")
    overwrite: bool = setting(False, "replace an earlier run with the same tag (its checkpoints, adapter, result)")

    val_identities: int = setting(100, "full profile: identities held out of the training pack (never trained "
                                  "on) whose pairs are the validation pack")
    alpha: float | None = setting(None, "LoRA alpha (default: = rank)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch")
    use_rslora: bool = setting(False, "rank-stabilised scaling alpha/sqrt(r)")
    lora_targets: tuple[str, ...] | None = setting(None, "module names to adapt (default: the backbone's: "
                                                   "ResNet convolutions, ViT q/v projections)")
    s: float = setting(64.0, "logit scale")
    m: float | None = setting(None, "margin (default CosFace 0.35, ArcFace 0.5)")
    eval_every_epoch: bool = setting(True, "score the validation packs after every epoch")
    seed: int = setting(0, "seed of LoRA init, class centres, batch order and augmentation")

    def __post_init__(self) -> None:
        super().__post_init__()  # ranges, choices (data_profile, head_init, margin), resume vs overwrite
        self.benchmarks = tuple(self.benchmarks or ())
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)

    @property
    def tag(self) -> str:
        """A file-name-safe run name, e.g. ``baseline_embedded_dlib-resnet29_r8_seed0_1a2b3c4d``."""
        return f"{self.experiment}_{self.data_profile}_{self.backbone}_r{self.rank}_seed{self.seed}_{self.digest()}"

    def lora_settings(self):
        """The :class:`~afr.adapters.lora.LoraSettings` of this run."""
        from afr.adapters.lora import LoraSettings

        return LoraSettings(r=self.rank, alpha=float(self.alpha or self.rank), dropout=self.lora_dropout,
                            use_rslora=self.use_rslora, target_modules=self.lora_targets)
