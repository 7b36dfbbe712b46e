"""The one function from region sources to per-person masks, and the choice of source when none is named."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..errors import FaceStudioError
from ..faces.regions import person_masks, person_regions
from .scene import dilated_face, scene_targets
from .sources import CallSource, PersonSource, SceneFaces, Segmented, Split, StylePeople

logger = logging.getLogger(__name__)


def choose_source(regions: Sequence[PersonSource | None], count: int, source: CallSource | None, *, scene: bool,
                  style: bool, scene_faces: Sequence[int] | None = None):
    """What places the people of a call: the named whole-call `source`, else (the automatic choice) the scene's
    faces with a scene image, the style image's people for several people without regions, else the people's
    own regions (strips for those without)."""
    chosen = None if scene_faces is None else tuple(scene_faces)
    if isinstance(source, Segmented) and scene:
        return Segmented(chosen)
    if source is not None:
        return source
    if scene:
        return SceneFaces(chosen)
    if style and count > 1 and all(r is None for r in regions):
        return StylePeople()
    return tuple(regions)


def resolve_regions(sources, count: int, size: tuple[int, int], *, analyzer=None, scene: np.ndarray | None = None,
                    style: np.ndarray | None = None, segmenter=None) -> np.ndarray:
    """Per-person masks `[count, height, width]` in [0, 1].

    Args:
        sources: a whole-call source (`Split`, `SceneFaces`, `StylePeople`, `Segmented`), or one per-person
            source (`Box`, `Mask` or None) per person: None is the whole image for one person, else its strip.
        count (`int`): how many people.
        size (`tuple[int, int]`): `(width, height)` of the output.
        analyzer: a `FaceAnalyzer` (to find the faces of `scene` or `style`).
        scene, style (`np.ndarray`, *optional*): RGB uint8 images at the output size.
        segmenter: a `PersonSegmenter` (default: the shipped model) for `Segmented`.
    """
    width, height = size
    if isinstance(sources, Split):
        return _strips(count, width, height)
    if isinstance(sources, SceneFaces):
        faces = scene_targets(analyzer, scene, count, sources.chosen)
        return np.stack([dilated_face(f, width, height) for f in faces])
    if isinstance(sources, StylePeople):
        faces = analyzer.detect(style)
        if len(faces) < count:
            logger.info("style image shows %d face(s) for %d identities: regions split left to right",
                        len(faces), count)
            return _strips(count, width, height)
        return person_masks(person_regions(_left_to_right(faces, count), size), width, height)
    if isinstance(sources, Segmented):
        return _segmented(sources, count, size, analyzer, scene, style, segmenter)
    people = list(sources) + [None] * (count - len(sources))
    # one person without a region takes the whole image; several take their strips (made once, not per person)
    spare = np.ones((1, height, width), np.float32) if count == 1 else _strips(count, width, height)
    masks = []
    for i, region in enumerate(people[:count]):
        masks.append(spare[i] if region is None else region.mask(width, height))
    return np.stack(masks) if masks else np.zeros((0, height, width), np.float32)


def _segmented(source: Segmented, count, size, analyzer, scene, style, segmenter) -> np.ndarray:
    from .segmentation import default_segmenter, split_by_nearest_face

    if scene is not None:
        image, faces = scene, scene_targets(analyzer, scene, count, source.chosen)
    elif style is not None:
        image, faces = style, analyzer.detect(style)
        if len(faces) < count:
            raise FaceStudioError(f"regions 'segment': the style image shows {len(faces)} face(s) for {count} "
                                  "identities")
        faces = _left_to_right(faces, count)
    else:
        raise FaceStudioError("regions 'segment' needs a scene or style image to find the people in")
    probability = (segmenter or default_segmenter()).probability(image)
    return split_by_nearest_face(probability, faces, size)


def _left_to_right(faces, count: int) -> list:
    """The `count` largest faces (the detector's order), left to right."""
    return sorted(faces[:count], key=lambda f: f.center[0])


def _strips(count: int, width: int, height: int) -> np.ndarray:
    masks = np.zeros((count, height, width), np.float32)
    for i in range(count):
        masks[i, :, round(i * width / count): round((i + 1) * width / count)] = 1.0
    return masks
