import cv2
import numpy as np
import pytest

from conftest import PHOTOS, run_in_threads
from facestudio.errors import AmbiguousFaceError, NoFaceError
from facestudio.faces import Face, YuNetDetector, select_face


def _composite(photos, names, height=500):
    """Photos side by side, each scaled to one height: a group picture with known people left to right."""
    parts = [cv2.resize(photos[n], (round(photos[n].shape[1] * height / photos[n].shape[0]), height),
                        interpolation=cv2.INTER_AREA) for n in names]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


@pytest.mark.parametrize("name", PHOTOS)
def test_main_face_found_in_every_photo(analyzer, photos, name):
    faces = analyzer.detect(photos[name])
    assert faces, f"no face in {name}"
    main = faces[0]
    assert main.score > 0.8
    assert main.eye_distance > 60  # the portrait's face, not a background one
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = main.landmarks
    assert rx < nx < lx and mrx < mlx  # person's right eye is on the image's left
    assert max(ry, ly) < ny < min(mry, mly)  # eyes above nose above mouth
    x0, y0, x1, y1 = main.box
    assert all(x0 - 5 <= x <= x1 + 5 and y0 - 5 <= y <= y1 + 5 for x, y in main.landmarks)


def test_faces_are_sorted_largest_first_and_located(analyzer, photos):
    pair = _composite(photos, ["biden.jpg", "obama.jpg"])
    small = np.zeros((500, 140, 3), np.uint8)
    small[:250, :130] = cv2.resize(photos["obama2.jpg"], (130, 250), interpolation=cv2.INTER_AREA)
    group = np.ascontiguousarray(np.concatenate([pair, small], axis=1))  # a third, smaller face on the right
    faces = analyzer.detect(group)
    assert len(faces) == 3
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    assert faces[2].center[0] > pair.shape[1]  # the smallest is the added one
    split = round(photos["biden.jpg"].shape[1] * 500 / photos["biden.jpg"].shape[0])
    xs = sorted(f.center[0] for f in faces[:2])
    assert xs[0] < split < xs[1] < pair.shape[1]  # one face on each photo


def test_large_close_up_found(analyzer, photos):
    face = analyzer.detect(photos["obama.jpg"])[0]
    x0, y0, x1, y1 = (round(v) for v in face.box)
    crop = photos["obama.jpg"][max(0, y0 - 40): y1 + 40, x0 - 40: x1 + 40]
    big = cv2.resize(crop, None, fx=1300 / crop.shape[0], fy=1300 / crop.shape[0], interpolation=cv2.INTER_CUBIC)
    faces = analyzer.detect(big)
    assert len(faces) == 1 and faces[0].score > 0.85
    assert faces[0].height > 0.6 * big.shape[0]


def test_no_face_in_noise_or_flat_images(analyzer):
    rng = np.random.default_rng(0)
    assert analyzer.detect((rng.random((300, 400, 3)) * 255).astype(np.uint8)) == []
    assert analyzer.detect(np.full((64, 64, 3), 128, np.uint8)) == []


def test_score_threshold_is_applied(photos):
    strict = YuNetDetector(score_threshold=0.99).detect(photos["obama.jpg"])
    assert strict == []
    with pytest.raises(ValueError):
        YuNetDetector(score_threshold=1.5)


def test_detector_is_thread_safe(analyzer, photos):
    expected = {n: analyzer.detect(photos[n]) for n in ("obama.jpg", "biden.jpg")}
    runs = run_in_threads(lambda name: analyzer.detect(photos[name]), list(expected), repeats=3)
    for name, found in runs.items():
        assert all(r == expected[name] for r in found)


def _face(x, size, score=0.9):
    s = size
    return Face(box=(x, 0, x + s, s), landmarks=((x + .3 * s, .4 * s), (x + .7 * s, .4 * s), (x + .5 * s, .6 * s),
                                                 (x + .35 * s, .8 * s), (x + .65 * s, .8 * s)), score=score)


def test_select_face_policy():
    big, other, tiny = _face(0, 100), _face(200, 90), _face(400, 40)
    assert select_face([big]) is big
    assert select_face([big, tiny]) is big  # clearly the main face
    assert select_face([big, other], index=1) is other
    with pytest.raises(AmbiguousFaceError, match="2 faces of similar size.*--face"):
        select_face([big, other], source="group.jpg")
    with pytest.raises(AmbiguousFaceError, match="face 5 asked for, but 2"):
        select_face([big, other], index=5)
    with pytest.raises(NoFaceError, match="party.jpg: no face found"):
        select_face([], source="party.jpg")
