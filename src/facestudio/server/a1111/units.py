"""ControlNet IP-Adapter units of an A1111 request -> facestudio's identities, style image and regions.

`parse_units` reads `alwayson_scripts.controlnet.args` without decoding any image: each enabled unit's role
(`names.unit_role`), weight, photos and region mask as bytes, or an error naming the field. `Unit.identity`
and `region_mask` then decode them with the checks every upload passes (`uploads.decode_upload`: type by content,
byte and pixel caps, decoded at a bounded size) in an upload-pool thread. A unit's image forms are the
extension's: a base64 string, `{"image", "mask"}`, `[image, mask]`, or a list of `{"image", "mask"}` (several
photos of one person, pooled). A server never reads a path or fetches a URL a client names.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from ...errors import FaceStudioError
from ...regions import Mask
from ..uploads import UploadError, UploadLimits, decode_upload, read_photos
from .names import unit_role
from .schemas import ControlNetUnit, Txt2ImgRequest

#: The unit fields facestudio reads; others are reported as ignored when set away from the extension's default.
READ_FIELDS = frozenset({"enabled", "module", "model", "weight", "image", "effective_region_mask"})
#: Unit fields that change an IP-Adapter unit's result in the extension, with the values that do not (every
#: other field, such as the preprocessor resolution, does nothing to an IP-Adapter unit).
_INERT = {"mask": (None, ""), "mask_image": (None, ""), "guidance_start": (0, 0.0), "guidance_end": (1, 1.0),
          "control_mode": ("Balanced", 0), "advanced_weighting": (None,), "ipadapter_input": (None,)}
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.I)


@dataclass(frozen=True)
class Unit:
    """One enabled unit: `field` names it in messages (`alwayson_scripts.ControlNet.args[0]`)."""

    field: str
    index: int
    role: str  # "identity" or "style"
    module: str
    model: str
    weight: float
    photos: tuple[tuple[str, bytes], ...]  # (label, encoded image)
    region: tuple[str, bytes] | None
    ignored: tuple[str, ...]

    def identity(self, pipe, limits: UploadLimits, face: int | None, name: str):
        """This unit's person as one `Identity` (its photos pooled), and the photos' descriptions."""
        arrays, chosen, described, _ = read_photos(pipe.get_face_analyzer(), self.photos, limits, face,
                                                "the facestudio.faces field")
        return pipe.encode_photos(arrays, chosen, name=name), described

    def style_image(self, limits: UploadLimits):
        label, data = self.photos[0]
        return decode_upload(data, label, limits, min_side=8).image

    def region_mask(self, limits: UploadLimits, width: int, height: int) -> Mask | None:
        """The effective region mask as a `regions.Mask` of its first channel (the extension reads that one; a
        transparent mask is read on white, as there), or an `UploadError` naming the field when its shape is not
        the output's (`width` x `height`, or that shape scaled)."""
        if self.region is None:
            return None
        label, data = self.region
        image = decode_upload(data, label, limits, min_side=1, max_side=None).image
        mw, mh = image.size
        if abs(mw * height - mh * width) >= max(width, height):
            raise UploadError(f"{label}: the mask is {mw}x{mh} pixels but the image is {width}x{height}: give a mask "
                              "of the output's size (or of its shape)", 422)
        return Mask(np.asarray(image)[:, :, 0].copy())


def find_controlnet(request: Txt2ImgRequest) -> tuple[str, list] | None:
    """The controlnet script's key as given (A1111 matches script names in any case) and its args; other
    always-on scripts are refused as A1111 refuses one it does not have."""
    found = None
    for key, script in request.alwayson_scripts.items():
        if key.lower() != "controlnet":
            raise FaceStudioError(f"alwayson_scripts.{key[:80]}: always on script {key[:80]!r} not found (facestudio "
                                  "serves 'controlnet' IP-Adapter units only)")
        found = (key, script.args)
    return found


def parse_units(request: Txt2ImgRequest) -> tuple[list[Unit], list[str]]:
    """The enabled units, and notes about the others (disabled ones are skipped, as the extension does)."""
    found = find_controlnet(request)
    if found is None:
        return [], []
    key, args = found
    units, notes = [], []
    for i, raw in enumerate(args):
        field = f"alwayson_scripts.{key}.args[{i}]"
        if not isinstance(raw, dict):
            raise FaceStudioError(f"{field}: expected a ControlNet unit (a JSON object), got {type(raw).__name__}")
        try:
            unit = ControlNetUnit.model_validate(raw)
        except ValidationError as e:
            problem = e.errors()[0]
            where = ".".join(str(p) for p in problem.get("loc", ()))
            raise FaceStudioError(f"{field}.{where}: {problem.get('msg', 'invalid')}") from None
        if not unit.enabled:
            notes.append(f"{field}: skipped (enabled is false or missing, as in the ControlNet extension)")
            continue
        role = unit_role(unit.module, unit.model, field)
        photos = _photos(unit.image, f"{field}.image")
        if role == "style" and len(photos) > 1:
            raise FaceStudioError(f"{field}.image: a style unit takes one image, got {len(photos)}")
        label = f"{field}.effective_region_mask"
        region = None if unit.effective_region_mask is None else (label, decode_base64(unit.effective_region_mask,
                                                                                       label))
        ignored = tuple(sorted(f"{field}.{name}" for name, value in raw.items()
                               if name not in READ_FIELDS and value not in _INERT.get(name, (value,))))
        units.append(Unit(field, i, role, unit.module, unit.model, unit.weight, photos, region, ignored))
    return units, notes


def _photos(image, field: str) -> tuple[tuple[str, bytes], ...]:
    """The unit's photos as `(label, bytes)`, from any of the extension's image forms (its masks are CLIP masks:
    facestudio finds the face itself, and ignores them)."""
    if image is None or image == "":
        raise FaceStudioError(f"{field}: missing; give the person's photo as base64")
    if isinstance(image, str):
        return ((field, decode_base64(image, field)),)
    if isinstance(image, dict):
        return ((f"{field}.image", decode_base64(image.get("image"), f"{field}.image")),)
    if isinstance(image, (list, tuple)) and image:
        if all(isinstance(item, dict) for item in image):
            if len(image) > 8:
                raise FaceStudioError(f"{field}: {len(image)} photos: at most 8 per unit")
            return tuple((f"{field}[{k}].image", decode_base64(item.get("image"), f"{field}[{k}].image"))
                         for k, item in enumerate(image))
        if len(image) == 2:  # [image, mask]
            return ((f"{field}[0]", decode_base64(image[0], f"{field}[0]")),)
    raise FaceStudioError(f"{field}: expected a base64 image, {{'image': ..., 'mask': ...}}, [image, mask] or a list "
                          "of {'image': ..., 'mask': ...}")


def decode_base64(value, field: str) -> bytes:
    """A base64 image (raw or a data: URL) as bytes, or an error naming the field."""
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if isinstance(value, str) else type(value).__name__
        raise FaceStudioError(f"{field}: expected a base64 image, got {got}")
    text = value.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I) or text.lower().startswith("file:"):
        raise FaceStudioError(f"{field}: a URL; send the image itself as base64 (this server fetches no URL and "
                              "reads no path a request names)")
    text = re.sub(r"\s+", "", _DATA_URL.sub("", text))
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(f"{field}: not base64 data (expected a base64-encoded PNG, JPEG or WebP image)", 422) \
            from None
