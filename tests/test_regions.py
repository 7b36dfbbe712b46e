import numpy as np
import pytest

from facestudio.faces import Face, Region, person_masks, person_regions


def _face(cx, cy, size, tilt_deg=0.0):
    t = np.radians(tilt_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    offsets = np.array([[-.2, -.1], [.2, -.1], [0, .05], [-.15, .25], [.15, .25]]) * size
    pts = offsets @ rot.T + [cx, cy]
    return Face(box=(cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2),
                landmarks=tuple(map(tuple, pts)), score=0.9)


def test_masks_are_in_range_at_any_resolution():
    region = Region.from_face(_face(100, 80, 60), (400, 300))
    for w, h in [(400, 300), (64, 48), (8, 6), (1, 1), (3000, 2250)]:
        mask = region.mask(w, h)
        assert mask.shape == (h, w) and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_head_covers_face_and_body_lies_below():
    face = _face(200, 100, 80)
    region = Region.from_face(face, (400, 400))
    head, body = region.mask(400, 400, "head"), region.mask(400, 400, "body")
    assert head[100, 200] == 1.0 and head[100, 200 + 70] == 0.0  # inside the face; beyond the ear
    assert body[399, 200] == 1.0 and body[30, 200] == 0.0  # body reaches the bottom; nothing above the head
    assert head[399, 200] == 0.0
    person = region.mask(400, 400)
    assert np.all(person >= np.maximum(head, body) - 1e-6)


def test_low_resolution_masks_are_area_averages_of_high_resolution_ones():
    region = Region.from_face(_face(210, 130, 90), (512, 512))
    high = region.mask(512, 512)
    low = region.mask(64, 64)
    pooled = high.reshape(64, 8, 64, 8).mean(axis=(1, 3))
    assert np.abs(low - pooled).max() < 0.06
    assert 0 < ((low > 0) & (low < 1)).sum()  # edges are soft, not a hard staircase


def test_face_ellipse_is_inside_the_head():
    region = Region.from_face(_face(200, 200, 100), (400, 400))
    face, head = region.mask(400, 400, "face"), region.mask(400, 400, "head")
    assert face[200, 200] == 1.0 and face.sum() < 0.6 * head.sum()
    assert np.all(face <= head + 1e-6)


def test_tilted_face_tilts_the_head():
    upright = Region.from_face(_face(200, 200, 100), (400, 400)).mask(400, 400, "head")
    tilted = Region.from_face(_face(200, 200, 100, tilt_deg=30), (400, 400)).mask(400, 400, "head")
    assert not np.array_equal(upright, tilted)
    ys, xs = np.nonzero(tilted > 0.5)
    # the head's long axis leans with the face: top of the head moves right for a clockwise tilt
    top = xs[ys < np.percentile(ys, 10)].mean()
    assert top > 200


def test_person_masks_are_disjoint_and_split_by_nearest_head():
    faces = [_face(150, 100, 80), _face(260, 110, 70)]  # bodies overlap
    regions = person_regions(faces, (400, 400))
    raw = np.stack([r.mask(400, 400) for r in regions])
    assert ((raw > 0).sum(0) > 1).any()  # the raw regions do overlap
    masks = person_masks(regions, 400, 400)
    assert masks.shape == (2, 400, 400)
    assert masks.sum(0).max() <= 1.0 + 1e-6
    assert masks[0, 100, 150] == 1.0 and masks[1, 110, 260] == 1.0  # each keeps its own face
    assert masks[0, 110, 260] == 0.0 and masks[1, 100, 150] == 0.0
    assert person_masks([], 8, 8).shape == (0, 8, 8)


def test_bad_arguments():
    region = Region.from_face(_face(10, 10, 8), (20, 20))
    with pytest.raises(ValueError, match="part must be"):
        region.mask(8, 8, "hair")
    with pytest.raises(ValueError, match="at least 1x1"):
        region.mask(0, 8)


def test_regions_on_a_real_photo(analyzer, photos):
    image = photos["obama.jpg"]
    face = analyzer.detect(image)[0]
    mask = Region.from_face(face, (image.shape[1], image.shape[0])).mask(image.shape[1], image.shape[0])
    cx, cy = (round(v) for v in face.center)
    assert mask[cy, cx] == 1.0
    assert 0.1 < mask.mean() < 0.7  # a portrait: the person fills part, not all, of the frame
