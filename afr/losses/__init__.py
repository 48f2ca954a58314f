"""Training losses: margins (CosFace, ArcFace), supervised InfoNCE, the router's domain loss, their sum."""
from afr.losses.combined import LossWeights, combine_losses
from afr.losses.contrastive import SupervisedInfoNCE, positive_mask, supervised_info_nce
from afr.losses.domain import DomainClassificationLoss, domain_classification_loss, domain_targets
from afr.losses.margin import MARGINS, ArcFaceMargin, CosFaceMargin, MarginLoss, create_margin

__all__ = [
    "MARGINS",
    "ArcFaceMargin",
    "CosFaceMargin",
    "DomainClassificationLoss",
    "LossWeights",
    "MarginLoss",
    "SupervisedInfoNCE",
    "combine_losses",
    "create_margin",
    "domain_classification_loss",
    "domain_targets",
    "positive_mask",
    "supervised_info_nce",
]
