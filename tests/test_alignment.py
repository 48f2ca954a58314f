"""Five-point similarity alignment: templates, transform estimation, warping and the aligner."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from afr.align.mtcnn import Detections
from afr.align.transform import (
    ARCFACE_TEMPLATE_112,
    FaceAligner,
    align_face,
    center_crop_face,
    dlib_chip_template,
    estimate_similarity,
    face_template,
    warp_face,
)

needs_shared = pytest.mark.shared("weights/mtcnn", "data/faces")


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, [[tx], [ty]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _deepface(name: str) -> np.ndarray:
    from afr.data.images import read_image
    from afr.paths import faces_root

    return read_image(faces_root() / "deepface" / name)


# ------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("angle, scale, tx, ty", [(0, 1, 0, 0), (17, 3.2, 140, -35), (-160, 0.4, -8, 300)])
def test_known_similarity_is_recovered(angle, scale, tx, ty):
    truth = _similarity(angle, scale, tx, ty)
    for template in (ARCFACE_TEMPLATE_112, dlib_chip_template()):
        moved = _apply(truth, template)
        np.testing.assert_allclose(estimate_similarity(template, moved), truth, atol=1e-9)
        # and the inverse direction maps the moved points back onto the template
        back = estimate_similarity(moved, template)
        np.testing.assert_allclose(_apply(back, moved), template, atol=1e-8)


def test_similarity_fit_is_the_least_squares_optimum_on_noisy_points():
    rng = np.random.default_rng(0)
    source = ARCFACE_TEMPLATE_112 + rng.normal(0, 2.0, ARCFACE_TEMPLATE_112.shape)
    target = _apply(_similarity(25, 1.7, 30, 12), ARCFACE_TEMPLATE_112) + rng.normal(0, 1.5, (5, 2))
    ours = estimate_similarity(source, target)

    def cost(matrix):
        return float(((_apply(matrix, source) - target) ** 2).sum())

    opencv, _ = cv2.estimateAffinePartial2D(source, target, method=cv2.LMEDS)
    assert opencv is not None and cost(ours) <= cost(opencv) + 1e-9
    # no nearby similarity (a, b, tx, ty) does better
    a, b, tx, ty = ours[0, 0], ours[1, 0], ours[0, 2], ours[1, 2]
    for step in np.eye(4) * 1e-3:
        for sign in (1, -1):
            da, db, dx, dy = sign * step
            nudged = np.array([[a + da, -(b + db), tx + dx], [b + db, a + da, ty + dy]])
            assert cost(nudged) >= cost(ours)


def test_no_reflection_is_fitted():
    mirrored = ARCFACE_TEMPLATE_112 * [-1, 1]
    matrix = estimate_similarity(ARCFACE_TEMPLATE_112, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="equal shape"):
        estimate_similarity(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="NaN"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="geometry"):
        face_template("vggface")
    with pytest.raises(ValueError, match="5 landmarks"):
        align_face(np.zeros((50, 50, 3), np.uint8), np.zeros((4, 2)))


# ------------------------------------------------------------------------------- templates
def test_dlib_template_places_the_mean_face_with_dlib_padding():
    unpadded = dlib_chip_template(size=1, padding=0.0)
    chip = dlib_chip_template(size=150, padding=0.25)
    np.testing.assert_allclose(chip, (0.25 + unpadded) / 1.5 * 150)
    left_eye, right_eye, nose, left_mouth, right_mouth = chip
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert left_eye[1] < nose[1] < left_mouth[1]
    # dlib's mean face is left-right symmetric about x = 0.490127 (its nose line)
    axis = (0.25 + 0.490127) / 1.5 * 150
    assert abs((left_eye[0] + right_eye[0]) / 2 - axis) < 0.05
    assert abs(nose[0] - axis) < 1e-6


def test_template_scale_zooms_about_the_chip_centre():
    for geometry, size in (("dlib", 150), ("arcface", 112)):
        base, tight = face_template(geometry, size), face_template(geometry, size, scale=1.2)
        np.testing.assert_allclose(tight - size / 2, (base - size / 2) * 1.2)
    np.testing.assert_allclose(face_template("arcface", 224), ARCFACE_TEMPLATE_112 * 2)


# ------------------------------------------------------------------------------- real faces
@needs_shared
@pytest.mark.parametrize("geometry", ["arcface", "dlib"])
def test_detected_landmarks_land_on_the_template(detector, geometry):
    """Warping the detected points with the fitted transform puts each within a few chip pixels."""
    template = face_template(geometry)
    for name in ("img1.jpg", "img5.jpg", "img42.jpg"):
        detections = detector.detect(_deepface(name))
        points = detections.landmarks[detections.main_index()]
        warped = _apply(estimate_similarity(points, template), points)
        error = np.linalg.norm(warped - template, axis=1)
        size = 150 if geometry == "dlib" else 112
        assert error.max() < 0.08 * size and error.mean() < 0.04 * size, (name, error)


@needs_shared
def test_aligned_dlib_chip_shows_the_face_where_the_template_says(detector):
    """Re-detecting the face in the aligned 150x150 chip finds its landmarks near the template."""
    aligner = FaceAligner(detector, geometry="dlib")
    for name in ("img1.jpg", "img42.jpg"):
        aligned = aligner.align(_deepface(name))
        assert aligned.detected and aligned.chip.shape == (150, 150, 3) and aligned.chip.dtype == np.uint8
        again = detector.detect(aligned.chip)
        assert len(again) >= 1, f"no face in the aligned chip of {name}"
        points = again.landmarks[again.main_index()]
        error = np.linalg.norm(points - aligner.template, axis=1)
        assert error.max() < 10.0 and error.mean() < 6.0, (name, error)


@needs_shared
def test_warp_matches_the_fitted_transform_on_a_real_photo(detector):
    image = _deepface("img5.jpg")
    detections = detector.detect(image)
    points = detections.landmarks[detections.main_index()]
    chip = align_face(image, points, "arcface")
    assert chip.shape == (112, 112, 3)
    matrix = estimate_similarity(points, ARCFACE_TEMPLATE_112)
    # a chip pixel equals the bilinear sample of the photo at the inverse-mapped location
    inverse = cv2.invertAffineTransform(matrix)
    for x, y in ((56, 60), (30, 40), (80, 95)):
        sx, sy = _apply(inverse, np.array([[x, y]], float))[0]
        x0, y0 = int(np.floor(sx)), int(np.floor(sy))
        fx, fy = sx - x0, sy - y0
        patch = image[y0 : y0 + 2, x0 : x0 + 2].astype(float)
        expected = (patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy)
                    + patch[1, 0] * (1 - fx) * fy + patch[1, 1] * fx * fy)
        assert np.abs(chip[y, x].astype(float) - expected).max() <= 2.0


def test_warp_fills_outside_pixels_with_black():
    image = np.full((20, 20, 3), 200, np.uint8)
    chip = warp_face(image, _similarity(0, 1, 30, 30), 40)  # image lands in the chip's lower right
    assert chip[:25, :25].max() == 0 and chip[35, 35].min() == 200


# ------------------------------------------------------------------------------- fallback
def test_center_crop_takes_the_largest_centred_square():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (112, 92, 3), dtype=np.uint8)  # ORL shape: taller than wide
    chip = center_crop_face(image, 150)
    expected = cv2.resize(image[10:102, :], (150, 150), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(chip, expected)
    wide = rng.integers(0, 256, (239, 312, 3), dtype=np.uint8)  # thermal UND shape
    np.testing.assert_array_equal(
        center_crop_face(wide, 112, "arcface"), cv2.resize(wide[:, 36:275], (112, 112), interpolation=cv2.INTER_AREA)
    )
    assert center_crop_face(wide, geometry="arcface").shape == (112, 112, 3)


class _NoFaces:
    def detect(self, image):
        return Detections.empty()


def test_aligner_falls_back_to_the_centre_crop_when_nothing_is_found():
    image = np.random.default_rng(2).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    aligned = FaceAligner(_NoFaces(), geometry="arcface").align(image)
    assert not aligned.detected and aligned.landmarks is None and aligned.box is None
    np.testing.assert_array_equal(aligned.chip, center_crop_face(image, 112))


def test_aligner_picks_the_largest_confident_face():
    big = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], float)
    small = big / 4

    class TwoFaces:
        def detect(self, image):
            return Detections(
                boxes=np.array([[0, 0, 30, 30], [20, 20, 110, 110]], np.float32),
                scores=np.array([0.999, 0.97], np.float32),
                landmarks=np.stack([small, big]).astype(np.float32),
            )

    aligned = FaceAligner(TwoFaces(), geometry="dlib").align(np.zeros((128, 128, 3), np.uint8))
    assert aligned.detected and aligned.score == pytest.approx(0.97)
    np.testing.assert_allclose(aligned.landmarks, big, atol=1e-4)
    np.testing.assert_array_equal(aligned.box, [20, 20, 110, 110])
