"""Use an adapted backbone outside the notebooks: load it once, embed face photos, compare two faces.

    from afr.inference import FaceEmbedder

    embedder = FaceEmbedder.load("dlib-resnet29", adapter="results/adapters/lora_seed0")
    score = embedder.similarity("alice_1.jpg", "alice_2.jpg")  # cosine similarity in [-1, 1]

:func:`load_adapted_backbone` builds the backbone and folds the adapter into its weights wherever one set of
weights exists: a LoRA adapter always, a DA-LoRA adapter for the chosen ``domain`` (its expert, exactly what
oracle gating for that domain computes). A DA-LoRA adapter without a domain keeps its router, which picks the
experts per image (classifier gating), because no single merged network computes that.

:class:`FaceEmbedder` turns photos into L2-normalised embeddings the way ``python -m afr evaluate`` does: each
photo's main face is detected and aligned with the project's MTCNN (:func:`afr.align.align_photos`; a photo
without a detected face gets the centred crop and ``detected=False``), or the images are taken as aligned chips
(``aligned=True``), and the embedding of the chip and of its mirror are added before normalising
(:func:`afr.eval.extract.extract_embeddings`, InsightFace's flip test).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from torch import nn

__all__ = ["FaceEmbedder", "FaceEmbeddings", "ImageInput", "cosine_similarity", "load_adapted_backbone"]

log = logging.getLogger(__name__)

#: a face image: a file path or an ``HxWx3`` uint8 RGB array
ImageInput = Union[str, Path, np.ndarray]


def load_adapted_backbone(
    backbone: str = "dlib-resnet29",
    weights: str | Path | None = None,
    adapter: str | Path | None = None,
    domain: str | None = None,
    require_merge: bool = False,
) -> nn.Module:
    """The backbone ``backbone`` with the LoRA or DA-LoRA adapter in ``adapter`` (if any), merged when possible.

    Args:
        backbone: a name of :func:`afr.models.factory.create_backbone`.
        weights: its weights directory (dlib-resnet29 defaults to the shared weights).
        adapter: an adapter directory of any registered type (:func:`afr.adapters.save_adapter`: LoRA, DA-LoRA).
        domain: DA-LoRA only: the domain whose expert is merged (one of the adapter's domains).
        require_merge: refuse a DA-LoRA adapter without ``domain`` instead of keeping its router
            (an exported network must be one set of weights).

    Raises ValueError naming the problem: a domain for a LoRA adapter or without an adapter, a domain the
    DA-LoRA adapter has no expert for, a missing domain under ``require_merge``.
    """
    from afr.adapters import adapter_type_of, load_adapter, merge_adapter, registered_types
    from afr.models.factory import create_backbone

    if adapter is None:
        if domain is not None:
            raise ValueError(f"domain {domain!r} given without an adapter: it selects a DA-LoRA adapter's expert")
        return create_backbone(backbone, weights=weights)
    # any registered type, by the type its settings record; a routed adapter (DA-LoRA) routes by its router
    model = load_adapter(create_backbone(backbone, weights=weights), adapter, gating="classifier")
    kind = adapter_type_of(model)
    if not kind.per_domain:
        if domain is not None:
            per_domain = " / ".join(t.label for t in registered_types().values() if t.per_domain)
            raise ValueError(f"domain {domain!r} applies to {per_domain} adapters only; {adapter} is a {kind.label} "
                             "adapter")
        return merge_adapter(model)
    domains = list(kind.domains(model))
    if domain is None:
        if require_merge:
            raise ValueError(f"{adapter} is a {kind.label} adapter: name the domain whose expert to merge (--domain), "
                             f"one of {domains}")
        return model  # the router gates the experts per image (classifier gating)
    if domain not in domains:
        raise ValueError(f"domain {domain!r} has no expert in the {kind.label} adapter {adapter}; its domains are "
                         f"{domains}")
    return merge_adapter(model, domain)


def cosine_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1: same direction, 0: orthogonal)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return float(first @ second / (np.linalg.norm(first) * np.linalg.norm(second)))


@dataclass
class FaceEmbeddings:
    """Embeddings of several images: ``embeddings`` (N, D) float32, L2-normalised; ``detected`` (N,) bool,
    whether a face was found (all True for aligned chips, which are not searched)."""

    embeddings: np.ndarray
    detected: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass
class FaceEmbedder:
    """Face images -> L2-normalised embeddings with one (adapted) backbone; see the module docstring.

    Args:
        backbone: a :class:`~afr.models.base.Backbone`, e.g. from :func:`load_adapted_backbone`.
        aligned: the images are aligned chips already (only resized to the backbone's input size);
            otherwise every image is a photo whose main face is detected and aligned.
        flip: add the mirrored chip's embedding before normalising (flip test).
        batch_size: chips per forward pass.
        device: torch device of the forward passes.
    """

    backbone: nn.Module
    aligned: bool = False
    flip: bool = True
    batch_size: int = 64
    device: str = "cpu"
    _aligner: object | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(
        cls,
        backbone: str = "dlib-resnet29",
        weights: str | Path | None = None,
        adapter: str | Path | None = None,
        domain: str | None = None,
        **options: object,
    ) -> FaceEmbedder:
        """An embedder on :func:`load_adapted_backbone`'s network; ``options`` are the other fields."""
        return cls(load_adapted_backbone(backbone, weights, adapter, domain), **options)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------------------- public
    def embed(self, image: ImageInput) -> np.ndarray:
        """The embedding ``(D,)`` of one image (a photo's main face, or an aligned chip)."""
        result = self.embed_many([image])
        if not result.detected[0]:
            log.warning("no face detected in %s: the centred crop was embedded", _describe(image))
        return result.embeddings[0]

    def similarity(self, first: ImageInput, second: ImageInput) -> float:
        """Cosine similarity of two faces' embeddings: the higher, the more likely the same person."""
        embeddings = self.embed_many([first, second])
        for image, detected in zip((first, second), embeddings.detected):
            if not detected:
                log.warning("no face detected in %s: the centred crop was embedded", _describe(image))
        return cosine_similarity(*embeddings.embeddings)

    def embed_many(self, images: Sequence[ImageInput], progress: bool = False) -> FaceEmbeddings:
        """Embeddings of several images, with whether a face was found in each."""
        chips, detected = self.chips(images, progress)
        return FaceEmbeddings(self.embed_chips(chips, progress), detected)

    # ----------------------------------------------------------------------------------------- steps
    def chips(self, images: Sequence[ImageInput], progress: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
        """The backbone's chips of ``images`` and whether a face was detected in each (aligned input: True)."""
        from afr.data.images import read_image

        arrays = [read_image(image) if isinstance(image, (str, Path)) else np.asarray(image) for image in images]
        if self.aligned:
            return arrays, np.ones(len(arrays), dtype=bool)
        from afr.align import FaceAligner, align_photos

        if self._aligner is None:  # one MTCNN for the embedder's lifetime
            self._aligner = FaceAligner(geometry=self.backbone.alignment, size=self.backbone.input_size)
        faces = align_photos(arrays, progress=progress, aligner=self._aligner)  # type: ignore[arg-type]
        return [face.chip for face in faces], np.array([face.detected for face in faces], dtype=bool)

    def embed_chips(self, chips: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """L2-normalised embeddings ``(N, D)`` float32 of aligned chips (flip test as configured)."""
        from afr.eval.extract import extract_embeddings

        return extract_embeddings(self.backbone, chips, batch_size=self.batch_size, flip=self.flip,
                                  device=self.device, progress=progress)


def _describe(image: ImageInput) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"an image of shape {np.asarray(image).shape}"
