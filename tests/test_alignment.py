import numpy as np
import pytest

from facestudio.faces import ARCFACE, DLIB, align_face, estimate_similarity, paste_back
from facestudio.faces.alignment import invert_affine


def _similarity(scale, angle_deg, tx, ty):
    a = np.radians(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 500, (5, 2))
    truth = _similarity(0.37, 23.0, 14.0, -8.0)
    assert np.allclose(estimate_similarity(src, _apply(truth, src)), truth, atol=1e-9)


def test_reflection_is_never_returned():
    src = np.array([[0, 0], [3, 0], [0, 1], [1, 2.0], [2, 5]])
    mirrored = src * [-1, 1]
    m = estimate_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


@pytest.mark.parametrize("size, factor", [(112, 1), (224, 2), (448, 4)])
def test_synthetic_landmarks_land_on_the_arcface_template(size, factor):
    truth = _similarity(3.1, -17.0, 420.0, 233.0)
    landmarks = _apply(invert_affine(truth), np.asarray(ARCFACE.points))  # where a face would be in a photo
    image = np.zeros((900, 900, 3), np.uint8)
    aligned = align_face(image, landmarks, "arcface", size)
    mapped = _apply(aligned.matrix, landmarks)
    assert np.abs(mapped - np.asarray(ARCFACE.points) * factor).max() < 1e-3
    assert aligned.image.shape == (size, size, 3)


def test_insightface_convention_for_512():
    # insightface's estimate_norm: sizes not divisible by 112 use ratio size/128 and an 8*ratio x offset
    assert np.allclose(ARCFACE.at(512)[0], [38.2946 * 4 + 32, 51.6963 * 4])


def test_inverse_matches_and_dlib_template_is_inside_the_chip():
    truth = _similarity(0.5, 10.0, 3.0, 4.0)
    aligned = align_face(np.zeros((300, 300, 3), np.uint8), _apply(truth, np.asarray(DLIB.points)), "dlib")
    pts = np.random.default_rng(0).uniform(0, 150, (10, 2))
    assert np.allclose(_apply(aligned.matrix, _apply(aligned.inverse, pts)), pts, atol=1e-9)
    assert aligned.size == 150
    assert np.all((np.asarray(DLIB.points) > 30) & (np.asarray(DLIB.points) < 120))


def test_downscaled_crop_is_antialiased(analyzer, photos):
    """A face shrunk into a crop stays close to a 4x supersampled reference, closer than a plain warp."""
    import cv2

    for name in ("obama3.jpg", "biden.jpg"):
        image = photos[name]
        landmarks = analyzer.detect(image)[0].landmark_array()
        aligned = align_face(image, landmarks, "arcface", 112)
        big = align_face(image, landmarks, "arcface", 448).image
        reference = cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA).astype(float)
        naive = cv2.warpAffine(image, aligned.matrix, (112, 112)).astype(float)
        ours = np.abs(aligned.image - reference).mean()
        assert ours < 2.0 and ours < 0.5 * np.abs(naive - reference).mean()


def test_paste_back_round_trip(analyzer, photos):
    image = photos["obama.jpg"]
    face = analyzer.detect(image)[0]
    aligned = align_face(image, face.landmark_array(), "arcface", 512)
    # an untouched crop pasted back changes the face region only slightly (resampling) ...
    same = paste_back(image, aligned.image, aligned)
    x0, y0, x1, y1 = (round(v) for v in face.box)
    assert np.abs(same[y0:y1, x0:x1].astype(int) - image[y0:y1, x0:x1]).mean() < 3.0
    # ... and an edited crop changes nothing outside the crop's footprint
    edited = paste_back(image, np.zeros_like(aligned.image), aligned)
    footprint = cv2_footprint(aligned, image.shape)
    assert np.array_equal(edited[~footprint], image[~footprint])
    assert edited[round(face.center[1]), round(face.center[0])].max() == 0  # the centre is fully replaced


def cv2_footprint(aligned, shape):
    import cv2

    ones = np.ones((aligned.size, aligned.size), np.uint8)
    return cv2.warpAffine(ones, aligned.inverse, (shape[1], shape[0]), flags=cv2.INTER_NEAREST).astype(bool)
