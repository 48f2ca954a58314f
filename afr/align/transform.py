"""Five-point similarity alignment of faces into the ArcFace 112x112 or the dlib 150x150 chip geometry.

The five points are MTCNN's: left eye centre, right eye centre, nose tip, left mouth corner, right
mouth corner, "left" meaning image left, ``(x, y)`` in pixels. A chip is made by fitting the least-
squares similarity transform (rotation, uniform scale, translation; Umeyama 1991) from the detected
points to a template and warping the image with it (bilinear, pixels from outside the image are
black, as both dlib's ``extract_image_chip`` and InsightFace's ``norm_crop`` do).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "GEOMETRIES",
    "DEFAULT_SIZES",
    "AlignedFace",
    "FaceAligner",
    "align_face",
    "center_crop_face",
    "dlib_chip_template",
    "estimate_similarity",
    "face_template",
    "warp_face",
]

#: InsightFace's 5-point template for 112x112 ArcFace chips (``insightface.utils.face_align``).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

GEOMETRIES = ("arcface", "dlib")
#: native chip side of each geometry
DEFAULT_SIZES = {"arcface": 112, "dlib": 150}

# dlib's mean face shape: normalised (x, y) of the 68-point iBUG landmarks 17..67, from
# ``get_face_chip_details`` in dlib/image_transforms/interpolation.h (davisking/dlib), which maps
# it into a chip with ``(padding + v) / (2 * padding + 1) * size``. Index ``i - 17`` is landmark i.
_DLIB_MEAN_FACE_X = np.array([
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
])
_DLIB_MEAN_FACE_Y = np.array([
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
])


def _dlib_mean_face_5() -> np.ndarray:
    """The five MTCNN-style points of dlib's mean face, normalised to the [0, 1] face box."""
    shape = np.stack([_DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y], axis=1)  # landmark i at row i - 17

    def landmark(*indices: int) -> np.ndarray:
        return shape[[i - 17 for i in indices]].mean(axis=0)

    return np.stack([
        landmark(36, 37, 38, 39, 40, 41),  # eye on the image left (subject's right eye)
        landmark(42, 43, 44, 45, 46, 47),  # eye on the image right
        landmark(30),  # nose tip
        landmark(48),  # mouth corner, image left
        landmark(54),  # mouth corner, image right
    ])


def dlib_chip_template(size: int = 150, padding: float = 0.25, scale: float = 1.0) -> np.ndarray:
    """Where the five points sit in a dlib face chip of ``size`` x ``size`` pixels.

    ``padding`` is dlib's (0.25 for the ResNet-29 face-recognition chips). ``scale`` zooms the face
    about the chip centre: ``> 1`` makes the chip tighter (face larger), ``< 1`` looser. The chip is
    fitted to 5 points rather than dlib's 41 landmarks, so a scale other than 1 may match dlib's own
    chips better; tune it on training identities only.
    """
    if size <= 0 or padding < 0 or scale <= 0:
        raise ValueError(f"need size > 0, padding >= 0, scale > 0; got {size}, {padding}, {scale}")
    points = (padding + _dlib_mean_face_5()) / (2 * padding + 1) * size
    centre = size / 2.0
    return centre + (points - centre) * scale


def face_template(geometry: str = "arcface", size: int | None = None, scale: float = 1.0) -> np.ndarray:
    """The five target points ``(5, 2)`` of a ``size``-pixel chip in ``geometry``.

    ArcFace: the 112 template multiplied by ``size / 112``; dlib: :func:`dlib_chip_template` with
    padding 0.25. ``scale`` zooms the face about the chip centre in both.
    """
    geometry = _check_geometry(geometry)
    size = DEFAULT_SIZES[geometry] if size is None else int(size)
    if geometry == "dlib":
        return dlib_chip_template(size, 0.25, scale)
    if size <= 0 or scale <= 0:
        raise ValueError(f"need size > 0 and scale > 0; got {size}, {scale}")
    centre = size / 2.0
    return centre + (ARCFACE_TEMPLATE_112 * (size / 112.0) - centre) * scale


def estimate_similarity(src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) taking ``src_points`` onto ``dst_points``.

    Both are ``(N, 2)`` with ``N >= 2``. Returns the ``2x3`` float64 matrix ``M`` with
    ``dst ~= src @ M[:, :2].T + M[:, 2]`` (rotation and uniform scale, no reflection).
    """
    src = np.asarray(src_points, dtype=np.float64)
    dst = np.asarray(dst_points, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(
            f"need two (N, 2) point arrays of equal shape with N >= 2, got {src.shape} and {dst.shape}"
        )
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinite values")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c ** 2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("source points coincide; a similarity transform is undefined")
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` (HxW or HxWxC) by the 2x3 ``matrix`` into a ``size`` x ``size`` chip.

    Bilinear interpolation; chip pixels that fall outside the image are 0 (``BORDER_CONSTANT``).
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"warp_face expects an HxW or HxWxC image array, got {getattr(image, 'shape', image)}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"warp_face expects a 2x3 affine matrix, got shape {matrix.shape}")
    return cv2.warpAffine(
        image, matrix, (int(size), int(size)), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    geometry: str = "arcface",
    size: int | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Cut the face with 5 ``landmarks`` ``(5, 2)`` out of ``image`` as a ``size`` chip in ``geometry``.

    ``size`` defaults to the geometry's native side (112 ArcFace, 150 dlib); ``scale`` as in
    :func:`face_template`.
    """
    geometry = _check_geometry(geometry)
    size = DEFAULT_SIZES[geometry] if size is None else int(size)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"align_face expects 5 landmarks of shape (5, 2), got {landmarks.shape}")
    matrix = estimate_similarity(landmarks, face_template(geometry, size, scale))
    return warp_face(image, matrix, size)


def center_crop_face(image: np.ndarray, size: int | None = None, geometry: str = "dlib") -> np.ndarray:
    """Fallback chip for faces the detector misses (tight crops such as ORL, registered thermal).

    Takes the largest centred square of the image (side ``min(H, W)``, offset ``(H - side) // 2``,
    ``(W - side) // 2``) and resizes it to ``size`` x ``size`` (area interpolation when shrinking,
    bilinear when enlarging). ``geometry`` only chooses the default ``size`` (150 dlib, 112 ArcFace);
    no face-specific geometry is assumed, so it fits images already cropped around the face.
    """
    geometry = _check_geometry(geometry)
    size = DEFAULT_SIZES[geometry] if size is None else int(size)
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"center_crop_face expects an HxW or HxWxC image, got {getattr(image, 'shape', image)}")
    if size <= 0:
        raise ValueError(f"chip size must be positive, got {size}")
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def _check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown alignment geometry {geometry!r}; expected one of {GEOMETRIES}")
    return geometry


# ---------------------------------------------------------------------------------------------
# detector + alignment
# ---------------------------------------------------------------------------------------------
class _Detector(Protocol):
    def detect(self, image: np.ndarray):  # -> afr.align.mtcnn.Detections
        ...


@dataclass
class AlignedFace:
    """One aligned chip and how it was obtained.

    ``landmarks`` ``(5, 2)`` and ``box`` ``(4,)`` are in the input image's pixels, ``None`` when the
    detector found nothing and ``chip`` is the :func:`center_crop_face` fallback (``detected`` False).
    """

    chip: np.ndarray
    landmarks: np.ndarray | None
    detected: bool
    box: np.ndarray | None
    score: float | None = None


class FaceAligner:
    """Detect the main face and align it; fall back to a centred crop when no face is found.

    Args:
        detector: anything with ``detect(image) -> Detections`` (default: a CPU :class:`MTCNN` on the
            shared weights, which raises ``MissingResourceError`` when they are missing).
        geometry: ``'dlib'`` (150x150, 25 % padding) or ``'arcface'`` (112x112).
        size: chip side; ``None`` uses the geometry's native size.
        scale: face zoom about the chip centre (see :func:`face_template`).

    The main face is the detection with the largest ``box area * score``
    (:meth:`Detections.main_index`). Counting fallbacks is the caller's job: read ``detected``.
    """

    def __init__(
        self,
        detector: _Detector | None = None,
        geometry: str = "dlib",
        size: int | None = None,
        scale: float = 1.0,
    ) -> None:
        if detector is None:
            from afr.align.mtcnn import MTCNN

            detector = MTCNN()
        self.detector = detector
        self.geometry = _check_geometry(geometry)
        self.size = DEFAULT_SIZES[geometry] if size is None else int(size)
        self.scale = scale
        self.template = face_template(self.geometry, self.size, scale)

    def align(self, image: np.ndarray) -> AlignedFace:
        """Align the main face of an ``HxWx3`` uint8 RGB image."""
        detections = self.detector.detect(image)
        main = detections.main_index()
        if main is None:
            return AlignedFace(center_crop_face(image, self.size, self.geometry), None, False, None)
        landmarks = detections.landmarks[main].astype(np.float64)
        chip = warp_face(image, estimate_similarity(landmarks, self.template), self.size)
        return AlignedFace(chip, landmarks, True, detections.boxes[main].copy(), float(detections.scores[main]))
