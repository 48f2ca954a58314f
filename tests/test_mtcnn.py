"""MTCNN on the real weights and the real deepface photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from afr.align.mtcnn import MTCNN, Detections, nms
from afr.paths import MissingResourceError

needs_shared = pytest.mark.shared("weights/mtcnn", "data/faces")

# a spread of sizes: 1868x1382, 330x512, 4352x2903 (largest), 660x990, two people's photos
FAST_PHOTOS = ("img1.jpg", "img5.jpg", "img49.jpg", "img42.jpg", "img17.jpg")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _deepface(name: str) -> np.ndarray:
    from afr.data.images import read_image
    from afr.paths import faces_root

    return read_image(faces_root() / "deepface" / name)


def _assert_face_layout(detections: Detections) -> None:
    """Plausible face geometry for the main face: eyes left/right, above nose, above mouth; inside box."""
    main = detections.main_index()
    points = detections.landmarks[main]
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    x1, y1, x2, y2 = detections.boxes[main]
    assert (points[:, 0] > x1).all() and (points[:, 0] < x2).all()
    assert (points[:, 1] > y1).all() and (points[:, 1] < y2).all()


def _check_detections_layout(detections: Detections) -> None:
    n = len(detections)
    assert detections.boxes.shape == (n, 4) and detections.boxes.dtype == np.float32
    assert detections.scores.shape == (n,) and detections.landmarks.shape == (n, 5, 2)
    assert (np.diff(detections.scores) <= 0).all(), "detections must be sorted by descending score"


@needs_shared
def test_finds_the_face_in_five_deepface_photos(detector):
    for name in FAST_PHOTOS:
        detections = detector.detect(_deepface(name))
        assert len(detections) >= 1, f"no face found in {name}"
        _check_detections_layout(detections)
        assert detections.scores[detections.main_index()] > 0.9, name
        _assert_face_layout(detections)


@pytest.mark.slow
@needs_shared
def test_finds_faces_in_at_least_58_of_the_61_labelled_deepface_photos(detector):
    from afr.data.images import read_image
    from afr.data.sources import list_deepface

    photos = list_deepface()
    assert len(photos) == 61
    missed = []
    for photo in photos:
        detections = detector.detect(read_image(photo.path))
        if len(detections) == 0:
            missed.append(photo.path.name)
        else:
            _assert_face_layout(detections)
    assert len(photos) - len(missed) >= 58, f"missed {missed}"


@needs_shared
def test_landmarks_follow_a_mirrored_photo(detector):
    """Mirroring the photo mirrors the landmarks (left/right swapped) to within 4 % of the face size.

    This pins the network conventions (axis order of the dense layers, landmark x/y layout): with the
    feature map flattened in the wrong order the mirrored landmarks disagree by ~15 %.
    """
    for name in ("img5.jpg", "img42.jpg"):
        image = _deepface(name)
        plain = detector.detect(image)
        mirrored = detector.detect(np.ascontiguousarray(image[:, ::-1]))
        a, b = plain.main_index(), mirrored.main_index()
        points = mirrored.landmarks[b][[1, 0, 2, 4, 3]].copy()
        points[:, 0] = image.shape[1] - 1 - points[:, 0]
        face_side = plain.boxes[a, 2] - plain.boxes[a, 0]
        error = np.linalg.norm(points - plain.landmarks[a], axis=1).max() / face_side
        assert error < 0.04, f"{name}: mirrored landmarks off by {error:.3f} of the face size"


@needs_shared
def test_downscaled_detection_maps_back_to_original_pixels(detector):
    """A photo enlarged 3x (beyond max_image_side) gives 3x the landmarks of the original."""
    image = _deepface("img5.jpg")  # 330x512, detected at full resolution
    large = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)
    assert max(large.shape[:2]) > detector.max_image_side
    small, big = detector.detect(image), detector.detect(large)
    ref = small.landmarks[small.main_index()]
    got = big.landmarks[big.main_index()] / 3.0
    face_side = small.boxes[small.main_index(), 2] - small.boxes[small.main_index(), 0]
    assert np.abs(got - ref).max() < 0.05 * face_side


@needs_shared
def test_blank_image_has_no_face(detector):
    detections = detector.detect(np.full((200, 300, 3), 128, np.uint8))
    assert len(detections) == 0 and detections.main_index() is None
    _check_detections_layout(detections)


@needs_shared
def test_bad_images_are_refused(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        detector.detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        detector.detect(np.zeros((8, 100, 3), np.uint8))


def test_missing_weights_name_the_folder(tmp_path):
    absent = tmp_path / "no_such_dir"
    with pytest.raises(MissingResourceError, match="no_such_dir"):
        MTCNN(weights_dir=absent)
    with pytest.raises(MissingResourceError, match="pnet.pt"):
        MTCNN(weights_dir=tmp_path)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    # IoU(0,1) = 81/119 = 0.68; box 3 lies inside box 0 (IoU 0.25, min-overlap 1.0)
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 0, 2]
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [3, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0
    with pytest.raises(ValueError, match="mode"):
        nms(boxes, scores, 0.5, mode="iou")
