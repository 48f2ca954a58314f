"""Align a list of photos into one backbone's chip geometry: the one path ``evaluate --folder`` and ``embed`` share.

Both commands detect each photo's main face with MTCNN and warp it to the backbone's template; a photo where
no face is found gets the centred-crop fallback of :class:`~afr.align.transform.FaceAligner` (by design for the
already-cropped thermal faces). Each :class:`~afr.align.transform.AlignedFace` keeps ``detected``, so a caller
can count the fallbacks (``evaluate``) or report them per file (``embed``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from afr.align.transform import AlignedFace, FaceAligner

__all__ = ["align_photos"]

log = logging.getLogger(__name__)


def align_photos(
    images: Sequence[np.ndarray],
    geometry: str = "dlib",
    size: int | None = None,
    progress: bool = False,
    aligner: FaceAligner | None = None,
) -> list[AlignedFace]:
    """Detect and align the main face of every ``HxWx3`` uint8 RGB photo.

    Args:
        images: the photos.
        geometry: chip template, ``'dlib'`` or ``'arcface'`` (a backbone's ``alignment``).
        size: chip side (a backbone's ``input_size``); ``None`` is the geometry's native size.
        progress: a tqdm bar on stderr.
        aligner: reuse an existing aligner (its MTCNN) instead of building one; ``geometry`` and
            ``size`` are then ignored.

    Logs one warning with the number of photos that took the centred-crop fallback.
    """
    aligner = aligner if aligner is not None else FaceAligner(geometry=geometry, size=size)
    faces = [aligner.align(image) for image in tqdm(images, desc="aligning", unit="image", disable=not progress)]
    fallbacks = sum(not face.detected for face in faces)
    if fallbacks:
        log.warning("no face detected in %d of %d images: centre crops used instead", fallbacks, len(faces))
    return faces
