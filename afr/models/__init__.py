"""Face backbones (dlib ResNet-29, DINOv2/CLIP ViTs), class-centre head and the recognition model.

``HFViTBackbone`` (which imports transformers) and the dlib ResNet are loaded lazily, so importing
:mod:`afr.models` stays cheap.
"""
from __future__ import annotations

from typing import Any

from afr.models.base import Backbone
from afr.models.factory import (
    BackboneMismatchError,
    MissingWeightsError,
    UnknownBackboneError,
    available_backbones,
    create_backbone,
)
from afr.models.heads import ClassCentres
from afr.models.layout import fast_layout
from afr.models.recognizer import FaceRecognitionModel, RecognizerOutput

__all__ = [
    "Backbone",
    "BackboneMismatchError",
    "ClassCentres",
    "FaceRecognitionModel",
    "HFViTBackbone",
    "MissingWeightsError",
    "RecognizerOutput",
    "UnknownBackboneError",
    "available_backbones",
    "create_backbone",
    "fast_layout",
]


def __getattr__(name: str) -> Any:
    if name == "HFViTBackbone":
        from afr.models.vit import HFViTBackbone

        return HFViTBackbone
    raise AttributeError(f"module 'afr.models' has no attribute {name!r}")
