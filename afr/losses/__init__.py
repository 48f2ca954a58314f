"""Training losses."""
from afr.losses.margin import MARGINS, ArcFaceMargin, CosFaceMargin, MarginLoss, create_margin

__all__ = ["MARGINS", "ArcFaceMargin", "CosFaceMargin", "MarginLoss", "create_margin"]
