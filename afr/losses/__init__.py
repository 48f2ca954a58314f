"""Training losses: margins (CosFace, ArcFace), supervised InfoNCE, the router's domain loss, their sum; the
prototype loss of few-shot episodes."""
from afr.losses.combined import LossWeights, combine_losses
from afr.losses.contrastive import SupervisedInfoNCE, positive_mask, supervised_info_nce
from afr.losses.domain import DomainClassificationLoss, domain_classification_loss, domain_targets
from afr.losses.margin import MARGINS, ArcFaceMargin, CosFaceMargin, MarginLoss, create_margin
from afr.losses.prototype import prototype_margin_loss, prototypes

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
    "prototype_margin_loss",
    "prototypes",
    "supervised_info_nce",
]
