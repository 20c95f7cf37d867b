"""faces/alignment.py: the similarity estimate, the template and the warped crops."""
import cv2
import numpy as np
import pytest

from faces.alignment import (
    ARCFACE_TEMPLATE_112,
    align_face,
    alignment_matrix,
    box_matrix,
    crop_box,
    estimate_similarity,
    reference_points,
    transform_points,
)


def similarity(scale, degrees, tx, ty):
    angle = np.deg2rad(degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, [[tx], [ty]]])


@pytest.mark.parametrize("scale, degrees, tx, ty", [(1.0, 0, 0, 0), (2.7, 33, -40.5, 12.25), (0.31, -170, 500, 3)])
def test_known_similarity_is_recovered(scale, degrees, tx, ty):
    truth = similarity(scale, degrees, tx, ty)
    src = np.random.default_rng(0).uniform(0, 300, size=(5, 2))
    estimated = estimate_similarity(src, transform_points(truth, src))
    np.testing.assert_allclose(estimated, truth, atol=1e-6)


def test_least_squares_with_noise_and_no_reflection():
    rng = np.random.default_rng(1)
    truth = similarity(1.3, 15, 7, -3)
    src = rng.uniform(0, 100, size=(40, 2))
    dst = transform_points(truth, src) + rng.normal(scale=0.5, size=(40, 2))
    estimated = estimate_similarity(src, dst)
    np.testing.assert_allclose(estimated[:, :2], truth[:, :2], atol=0.01)

    def residual(matrix):
        return np.sum((transform_points(matrix, src) - dst) ** 2)

    assert residual(estimated) <= residual(truth)  # least squares: no worse than the true transform
    scale = np.hypot(*estimated[:, 0])
    degrees = np.degrees(np.arctan2(estimated[1, 0], estimated[0, 0]))
    for d_scale, d_degrees, d_x, d_y in np.vstack([np.eye(4), -np.eye(4)]) * 1e-3:
        nudged = similarity(scale + d_scale, degrees + d_degrees, *(estimated[:, 2] + [d_x, d_y]))
        assert residual(estimated) < residual(nudged)
    mirrored = src * [-1, 1]  # the best orthogonal fit is a reflection: a rotation must come out anyway
    assert np.linalg.det(estimate_similarity(src, mirrored)[:, :2]) > 0


def test_agrees_with_opencv_on_exact_points():
    truth = similarity(0.8, 47, 20, 30)
    src = ARCFACE_TEMPLATE_112 * 3 + 100
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), transform_points(truth, src).astype(np.float32))
    np.testing.assert_allclose(estimate_similarity(src, transform_points(truth, src)), matrix, atol=1e-3)


def test_errors():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="two \\(N, 2\\) point arrays"):
        estimate_similarity(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="expected 3 landmarks"):
        alignment_matrix(np.ones((5, 2)), template_indices=[0, 1, 2])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        align_face(np.zeros((50, 50), np.uint8), ARCFACE_TEMPLATE_112)


def test_reference_points_sizes():
    np.testing.assert_allclose(reference_points(112), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(reference_points(224), 2 * ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(reference_points(128)[:, 0], ARCFACE_TEMPLATE_112[:, 0] + 8)


def dotted_photo(points, shape=(300, 400)):
    """A grey photo with a white dot of radius 2 at each landmark (drawn at 1/16 px precision)."""
    photo = np.full((*shape, 3), 40, np.uint8)
    for x, y in points:
        cv2.circle(photo, (round(x * 16), round(y * 16)), 2 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    return photo


def dot_centres(image, expected):
    """The intensity-weighted centre of the bright pixels near each expected point."""
    grey = image[..., 0].astype(np.float64)
    centres = []
    for x, y in expected:
        x0, y0 = int(x) - 6, int(y) - 6
        window = np.clip(grey[y0:y0 + 13, x0:x0 + 13] - 40, 0, None)
        ys, xs = np.mgrid[y0:y0 + 13, x0:x0 + 13]
        centres.append([(window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()])
    return np.array(centres)


def test_align_face_puts_landmarks_on_the_template():
    truth = similarity(2.2, -25, 130, 40)  # template -> photo
    landmarks = transform_points(truth, ARCFACE_TEMPLATE_112)
    aligned = align_face(dotted_photo(landmarks), landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    np.testing.assert_allclose(dot_centres(aligned, ARCFACE_TEMPLATE_112), ARCFACE_TEMPLATE_112, atol=0.35)


def test_three_points_and_larger_size():
    truth = similarity(1.5, 10, 60, 30)
    landmarks = transform_points(truth, ARCFACE_TEMPLATE_112)
    photo = dotted_photo(landmarks)
    # MegaFace's JSON order: image-right eye, image-left eye, nose
    aligned = align_face(photo, landmarks[[1, 0, 2]], size=224, template_indices=[1, 0, 2])
    np.testing.assert_allclose(dot_centres(aligned, 2 * ARCFACE_TEMPLATE_112), 2 * ARCFACE_TEMPLATE_112, atol=0.5)


def test_crop_box_is_a_square_around_the_box():
    photo = np.zeros((100, 200, 3), np.uint8)
    photo[20:60, 50:90] = 255  # a 40 x 40 white box
    crop = crop_box(photo, (50, 20, 40, 40), size=112)
    assert crop.shape == (112, 112, 3) and crop[5:-5, 5:-5].min() == 255
    matrix = box_matrix((0, 0, 10, 20), size=112, margin=0.5)  # tall box: the square side is 20 * 2
    np.testing.assert_allclose(transform_points(matrix, [[5, 10], [5, -10]]), [[56, 56], [56, 0]])
    with pytest.raises(ValueError, match="positive width"):
        box_matrix((0, 0, 0, 5))
