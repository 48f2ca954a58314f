"""Face detection (MTCNN) and 5-point similarity alignment into ArcFace or dlib chip geometry."""
from afr.align.batch import align_photos
from afr.align.mtcnn import MTCNN, Detections, load_mtcnn_nets, nms
from afr.align.transform import (
    ARCFACE_TEMPLATE_112,
    DEFAULT_SIZES,
    GEOMETRIES,
    AlignedFace,
    FaceAligner,
    align_face,
    center_crop_face,
    dlib_chip_template,
    estimate_similarity,
    face_template,
    warp_face,
)

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "DEFAULT_SIZES",
    "GEOMETRIES",
    "AlignedFace",
    "Detections",
    "FaceAligner",
    "MTCNN",
    "align_face",
    "align_photos",
    "center_crop_face",
    "dlib_chip_template",
    "estimate_similarity",
    "face_template",
    "load_mtcnn_nets",
    "nms",
    "warp_face",
]
