"""Region sources (`facestudio.regions`): parsing and checks, and `resolve_regions` for every source, on real photos."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facestudio.errors import FaceStudioError
from facestudio.imaging import load_image
from facestudio.regions import (Box, Mask, SceneFaces, Segmented, Split, StylePeople, as_call_source, as_region,
                                check_sources, resolve_regions)


@pytest.fixture(scope="module")
def pair(faces_dir) -> np.ndarray:
    """Two people side by side, faces of like size: Obama (left) and Biden (right), 1252x1200."""
    biden = np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))[:1200, 260:886]
    return np.concatenate([np.asarray(Image.open(faces_dir / "obama2.jpg").convert("RGB")), biden], 1)


def test_the_command_line_and_json_forms_parse_to_one_box_and_one_error_wording():
    assert as_region("0,0,32,64", "cli") == as_region([0, 0, 32, 64], "api") == Box(0, 0, 32, 64)
    assert list(Box(1, 2, 3, 4)) == [1, 2, 3, 4]
    with pytest.raises(FaceStudioError, match=r"^--region 0,0,80,64: not a box inside the 64x64 image"):
        as_region("0,0,80,64", "cli").check(64, 64, "cli")
    with pytest.raises(FaceStudioError, match=r"^identity 2: region \[0.0, 0.0, 80.0, 64.0\]: not a box inside the "
                                              r"64x64 image"):
        as_region([0, 0, 80, 64], "api").check(64, 64, "api", prefix="identity 2: ")
    with pytest.raises(FaceStudioError, match="--region '1,2,3': expected x0,y0,x1,y1"):
        as_region("1,2,3", "cli")
    assert isinstance(as_region(np.ones((4, 4))), Mask)
    assert as_call_source("segment") == Segmented() and as_call_source("split") == Split()
    assert as_call_source("auto") is None
    with pytest.raises(FaceStudioError, match="--regions 'faces': expected one of 'auto', 'split', 'segment'"):
        as_call_source("faces", "cli")


@pytest.mark.parametrize("kwargs, message", [
    (dict(regions=[Box(0, 0, 8, 8)], scene=True), "with --scene the people go where the scene's faces are: drop --region"),
    (dict(source=Split(), scene=True), "--regions 'split': with --scene"),
    (dict(scene_faces=[0]), "--scene-faces needs --scene"),
    (dict(regions=[Box(0, 0, 8, 8)], source=Split()), "--regions 'split' places every person: drop the per-person"),
    (dict(source=Segmented()), "--regions 'segment' needs a scene or style image"),
    (dict(regions=[], source=Segmented(), style=True), "--regions 'segment' places people: give at least one"),
    (dict(source=StylePeople()), "--regions 'style' needs a style image"),
])
def test_settings_that_do_not_fit_together_are_refused_by_name(kwargs, message):
    settings = {**dict(regions=[None], source=None, scene=False, style=False, scene_faces=None), **kwargs}
    with pytest.raises(FaceStudioError, match=message):
        check_sources(settings.pop("regions"), settings.pop("source"), where="cli", **settings)


def test_per_person_sources_boxes_masks_and_strips():
    masks = resolve_regions((Box(0, 0, 32, 64), None), 2, (64, 64))
    assert masks[0, :, :32].min() == 1 and masks[0, :, 32:].max() == 0
    assert masks[1, :, 32:].min() == 1 and masks[1, :, :32].max() == 0  # a person without a region: its strip
    assert resolve_regions((None,), 1, (64, 48)).min() == 1  # one person: the whole image
    assert np.array_equal(resolve_regions(Split(), 3, (60, 8)), resolve_regions((None, None, None), 3, (60, 8)))
    mask = resolve_regions((Mask(np.full((4, 4), 255, np.uint8)),), 1, (16, 16))
    assert mask.shape == (1, 16, 16) and mask.min() == 1


def test_the_people_of_a_style_image_place_the_identities_left_to_right(pair, analyzer):
    style = np.asarray(Image.fromarray(pair).resize((128, 128), Image.LANCZOS))
    masks = resolve_regions(StylePeople(), 2, (128, 128), analyzer=analyzer, style=style)
    assert masks.shape == (2, 128, 128) and masks.sum(0).max() <= 1.0 + 1e-6
    left, right = (np.nonzero(m.sum(0))[0].mean() for m in masks)
    assert left < 64 < right  # person 1 takes the left person's place
    blank = np.zeros((128, 128, 3), np.uint8)  # nobody in it: strips
    assert np.array_equal(resolve_regions(StylePeople(), 2, (128, 128), analyzer=analyzer, style=blank),
                          resolve_regions(Split(), 2, (128, 128)))


def test_scene_faces_are_the_grown_faces_chosen_or_largest(pair, analyzer):
    scene = np.asarray(Image.fromarray(pair).resize((256, 240), Image.LANCZOS))
    both = resolve_regions(SceneFaces(), 2, (256, 240), analyzer=analyzer, scene=scene)
    assert both.shape == (2, 240, 256) and set(np.unique(both)) == {0.0, 1.0}
    assert np.nonzero(both[0].sum(0))[0].max() < 128 <= np.nonzero(both[1].sum(0))[0].min()
    second = resolve_regions(SceneFaces((1,)), 1, (256, 240), analyzer=analyzer, scene=scene)
    assert np.array_equal(second[0], both[1] if analyzer.detect(scene)[1].center[0] > 128 else both[0])
    with pytest.raises(FaceStudioError, match="scene image has 2 face"):
        resolve_regions(SceneFaces(), 3, (256, 240), analyzer=analyzer, scene=scene)


# ------------------------------------------------------------------ person segmentation (the `segment` extra)

def _box_mean(mask, face, scale=1.0):
    x0, y0, x1, y1 = (int(round(v * scale)) for v in face.box)
    return float(mask[max(0, y0):y1, max(0, x0):x1].mean())


def test_segmented_people_follow_the_silhouette_on_a_real_photo(faces_dir, analyzer):
    pytest.importorskip("ai_edge_litert")
    from facestudio.regions.segmentation import default_segmenter

    photo = np.asarray(load_image(faces_dir / "32bit.png"))  # 626x1200, a flag behind him
    (face,) = analyzer.detect(photo)[:1]
    probability = default_segmenter().probability(photo)
    assert probability.shape == photo.shape[:2]
    assert _box_mean(probability, face) > 0.9  # the face
    x0, y0, x1, y1 = face.box
    chest = probability[int(y1 + 0.5 * (y1 - y0)):int(y1 + 1.2 * (y1 - y0)), int(x0):int(x1)]
    assert chest.mean() > 0.9  # the body below it
    assert probability[:int(y0) - 20, :int(x0) - 60].mean() < 0.1  # the flag beside and above the head
    (mask,) = resolve_regions(Segmented(), 1, (626, 1200), analyzer=analyzer, style=photo)
    assert np.array_equal(mask > 0, probability > 0.05)  # one person: the whole silhouette


def test_two_segmented_people_are_disjoint_and_each_keeps_their_own_body(pair, analyzer):
    pytest.importorskip("ai_edge_litert")
    size = (313, 300)  # a quarter of the pair's size, as a call would ask for
    style = np.asarray(Image.fromarray(pair).resize(size, Image.LANCZOS))
    masks = resolve_regions(Segmented(), 2, size, analyzer=analyzer, style=style)
    assert masks.shape == (2, 300, 313) and masks.dtype == np.float32
    assert not np.any((masks[0] > 0) & (masks[1] > 0))  # disjoint
    left, right = sorted(analyzer.detect(style)[:2], key=lambda f: f.center[0])
    assert _box_mean(masks[0], left) > 0.85 and _box_mean(masks[0], right) < 0.02
    assert _box_mean(masks[1], right) > 0.85 and _box_mean(masks[1], left) < 0.02
    for mask, face in ((masks[0], left), (masks[1], right)):  # each body below its face is that person's
        x0, y0, x1, y1 = (int(v) for v in face.box)
        assert mask[y1 + (y1 - y0) // 2:, x0:x1].mean() > 0.7
    # unlike the head-and-body estimate, the masks follow the silhouette: nobody owns the background
    estimate = resolve_regions(StylePeople(), 2, size, analyzer=analyzer, style=style)
    background = masks.sum(0) == 0
    assert background.mean() > 0.1 and estimate.sum(0)[background].mean() > 0.2


def test_segment_without_its_extra_names_the_extra():
    """With ai-edge-litert not importable, choosing 'segment' is one line naming the extra."""
    code = ("import sys; sys.modules['ai_edge_litert'] = None\n"
            "from facestudio.errors import FaceStudioError\n"
            "from facestudio.regions import Segmented, check_sources\n"
            "from facestudio.regions.segmentation import PersonSegmenter\n"
            "for attempt in (lambda: check_sources([None], Segmented(), scene=False, style=True, scene_faces=None),\n"
            "                PersonSegmenter):\n"
            "    try:\n"
            "        attempt()\n"
            "    except FaceStudioError as e:\n"
            "        print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["person segmentation needs ai-edge-litert: pip install 'facestudio[segment]'"] * 2
