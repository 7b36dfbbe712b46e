"""Where each person goes: typed region sources, and the one parser of their command-line and JSON forms.

Two kinds of source:

- **per person** (`IdentityInput.region`): a `Box` in output pixels or a `Mask` image; a person without one
  gets the whole image when alone, else a left-to-right strip;
- **for the whole call** (the `regions=` argument, `--regions`, the request's `"regions"`): `Split` (strips
  left to right), `SceneFaces` (the faces of the scene image), `StylePeople` (the people of the style image,
  head and body estimated from their faces) and `Segmented` (the people of the scene or style image as the
  selfie-segmentation model sees them, split between them by nearest face).

`resolve.resolve_regions` turns either kind into per-person masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import PIL.Image

from ..errors import FaceStudioError
from . import segmentation

#: How each setting is named where it is given, so one error wording names it the way the user wrote it.
FIELD_NAMES = {
    "python": {"region": "region", "regions": "regions", "scene": "scene_image", "scene_faces": "scene_faces"},
    "cli": {"region": "--region", "regions": "--regions", "scene": "--scene", "scene_faces": "--scene-faces"},
    "api": {"region": "region", "regions": "regions", "scene": "scene_image", "scene_faces": "scene_faces"},
    "a1111": {"region": "effective_region_mask", "regions": "facestudio.regions", "scene": "facestudio.scene_image",
              "scene_faces": "facestudio.scene_faces"},
}


def field_name(setting: str, where: str) -> str:
    """`setting` (`"region"`, `"regions"`, `"scene"`, `"scene_faces"`) as written in `where` (`"python"`, `"cli"`, `"api"`)."""
    return FIELD_NAMES[where][setting]


@dataclass(frozen=True)
class Box:
    """A box `(x0, y0, x1, y1)` in output pixels; iterating gives the four coordinates."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __iter__(self):
        return iter((self.x0, self.y0, self.x1, self.y1))

    def check(self, width: int, height: int, where: str = "python", prefix: str = "") -> "Box":
        """Raise unless the box lies inside a `width` x `height` image; returns the box."""
        if not (0 <= self.x0 < self.x1 <= width and 0 <= self.y0 < self.y1 <= height):
            shown = ",".join(f"{v:g}" for v in self) if where == "cli" else str([*self])
            raise FaceStudioError(f"{prefix}{field_name('region', where)} {shown}: not a box inside the "
                                  f"{width}x{height} image (need 0 <= x0 < x1 <= {width} and "
                                  f"0 <= y0 < y1 <= {height})")
        return self

    def mask(self, width: int, height: int) -> np.ndarray:
        """The box as a `[height, width]` float32 mask of 0 and 1."""
        self.check(width, height)
        mask = np.zeros((height, width), np.float32)
        mask[round(self.y0):round(self.y1), round(self.x0):round(self.x1)] = 1.0
        return mask


@dataclass(frozen=True, eq=False)
class Mask:
    """A mask image (PIL image or 2-D array, 0..1 or 0..255, any size), resized to the output."""

    image: Any

    def mask(self, width: int, height: int) -> np.ndarray:
        image = self.image
        array = np.asarray(image.convert("L") if isinstance(image, PIL.Image.Image) else image, dtype=np.float32)
        if array.ndim != 2:
            raise FaceStudioError(f"a region mask must be a single-channel image, got shape {list(array.shape)}")
        if array.max(initial=0) > 1:
            array = array / 255.0
        return np.clip(cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA), 0.0, 1.0)


@dataclass(frozen=True)
class Split:
    """Every person a vertical strip of equal width, left to right in the order given."""

    name = "split"


@dataclass(frozen=True)
class SceneFaces:
    """The scene image's faces, each grown by a tenth of its size: `chosen` by index (0 the largest), else
    the largest ones, left to right."""

    chosen: tuple[int, ...] | None = None
    name = "scene"


@dataclass(frozen=True)
class StylePeople:
    """The people of the style image (head and body estimated from each face), left to right; a left-to-right
    split when it shows fewer people than identities (FaceStudio, sec. 3.3)."""

    name = "style"


@dataclass(frozen=True)
class Segmented:
    """The people of the scene image (else the style image) as MediaPipe's selfie-segmentation model sees
    them, split between them by nearest face (`regions/segmentation.py`); `chosen` picks the scene's faces."""

    chosen: tuple[int, ...] | None = None
    name = "segment"


PersonSource = Box | Mask
CallSource = Split | SceneFaces | StylePeople | Segmented

#: The whole-call sources a user can name (`--regions NAME`, `"regions": NAME`); "auto" is the default.
CHOICES = {"auto": None, "split": Split(), "segment": Segmented()}


def available_choices() -> list[str]:
    """The names of `CHOICES` this install can run ("segment" needs the `segment` extra)."""
    return [name for name in CHOICES if name != "segment" or segmentation.installed()]


def as_region(value, where: str = "python", prefix: str = "") -> PersonSource | None:
    """One person's region from what a user gives: a `Box` or `Mask`, four numbers (a sequence, or the
    command line's `"x0,y0,x1,y1"`), a PIL image or a 2-D array."""
    if value is None or isinstance(value, (Box, Mask)):
        return value
    name = field_name("region", where)
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise FaceStudioError(f"{prefix}{name} {value!r}: expected x0,y0,x1,y1 in output pixels") from None
        if len(value) != 4:
            raise FaceStudioError(f"{prefix}{name} {','.join(f'{v:g}' for v in value)!r}: expected x0,y0,x1,y1 "
                                  "in output pixels")
        return Box(*value)
    if isinstance(value, (tuple, list)):
        if len(value) != 4:
            raise FaceStudioError(f"{prefix}{name} {list(value)}: expected x0,y0,x1,y1 in output pixels")
        return Box(*(float(v) for v in value))
    return Mask(value)


def as_call_source(value, where: str = "python") -> CallSource | None:
    """The whole-call source from a name of `CHOICES` (or a source itself; None: the automatic choice)."""
    if value is None or isinstance(value, (Split, SceneFaces, StylePeople, Segmented)):
        return value
    if isinstance(value, str) and value in CHOICES:
        return CHOICES[value]
    raise FaceStudioError(f"{field_name('regions', where)} {value!r}: expected one of "
                          + ", ".join(repr(c) for c in CHOICES))


def source_name(source: CallSource | None) -> str:
    """The name a whole-call source is recorded under in metadata ("auto": none chosen)."""
    return "auto" if source is None else source.name


def check_sources(regions: Sequence[PersonSource | None], source: CallSource | None, *, scene: bool, style: bool,
                  scene_faces, where: str = "python") -> None:
    """Reject region settings that do not fit together (no image work: the server calls this at submission).

    Args:
        regions: the people's own regions; source: the whole-call source; scene, style: whether a scene / style
            image is given; scene_faces: the scene faces chosen (None: automatic).
    """
    names = FIELD_NAMES[where]
    given = any(r is not None for r in regions)
    if scene:
        if given:
            raise FaceStudioError(f"with {names['scene']} the people go where the scene's faces are: "
                                  f"drop {names['region']}")
        if isinstance(source, (Split, StylePeople)):
            raise FaceStudioError(f"{names['regions']} {source.name!r}: with {names['scene']} the people go where "
                                  "the scene's faces are")
    if scene_faces is not None and not scene:
        raise FaceStudioError(f"{names['scene_faces']} needs {names['scene']}")
    if source is not None and given:
        raise FaceStudioError(f"{names['regions']} {source.name!r} places every person: drop the per-person "
                              f"{names['region']}")
    if isinstance(source, Segmented):
        if not regions:
            raise FaceStudioError(f"{field_name('regions', where)} 'segment' places people: give at least one "
                                  "identity")
        if not (scene or style):
            raise FaceStudioError(f"{field_name('regions', where)} 'segment' needs a scene or style image to find "
                                  "the people in")
        segmentation.require_installed()
    if isinstance(source, StylePeople) and not style:
        raise FaceStudioError(f"{field_name('regions', where)} 'style' needs a style image")
