"""Per-person regions: where each person's head and body are, as masks at any resolution.

The multi-identity attention lets each identity act only inside its person's region, so every mask here is
rendered at the size asked for (a 64x64 latent, an 8x8 attention map, the full image) from the same
geometry, with anti-aliased edges and values in [0, 1].

The geometry is estimated from the face alone (no segmentation model ships offline): the head is an ellipse
around the face box, tilted with the eye line and raised to take in hair; the body is a trapezoid from the
chin widening to the shoulders and running to the bottom of the image. Proportions are those of an adult
seen from the front, in face heights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .detection import Face

# Proportions in units of the face box (YuNet's box runs from the brow line to the chin).
_HEAD_HALF_WIDTH = 0.80  # x face width
_HEAD_HALF_HEIGHT = 0.85  # x face height
_HEAD_RAISE = 0.15  # centre moved up by this x face height, for the skull and hair
_NECK_HALF_WIDTH = 0.45  # x face width, at the chin
_SHOULDER_DROP = 0.9  # shoulders this many face heights below the chin
_SHOULDER_HALF_WIDTH = 1.6  # x face width
_FACE_HALF_WIDTH = 0.55  # the face alone (for face swaps): an ellipse just around the box
_FACE_HALF_HEIGHT = 0.6
_SUPERSAMPLE = 16  # masks are drawn up to this many times larger, then area-averaged: soft edges


@dataclass(frozen=True)
class Region:
    """One person's face and head ellipses and body polygon in the pixel coordinates of a `width` x `height` image.

    Attributes:
        face (`tuple`): `((cx, cy), (half_width, half_height), angle_degrees)`, just around the face box.
        head (`tuple`): the same form, taking in the skull and hair.
        body (`tuple`): polygon vertices `((x, y), ...)`, clockwise from the left of the neck.
        image_size (`tuple[int, int]`): `(width, height)` of the image the coordinates refer to.
    """

    face: tuple
    head: tuple
    body: tuple
    image_size: tuple[int, int]

    @classmethod
    def from_face(cls, face: Face, image_size: tuple[int, int]) -> "Region":
        """Estimate a person's head and body from their detected face."""
        w, h = face.width, face.height
        (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]
        angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
        up = np.array([np.sin(np.radians(angle)), -np.cos(np.radians(angle))])  # "up" in the face's frame
        side = np.array([-up[1], up[0]])
        cx, cy = np.array(face.center) + up * _HEAD_RAISE * h
        head = ((float(cx), float(cy)), (_HEAD_HALF_WIDTH * w, _HEAD_HALF_HEIGHT * h), angle)
        face_ellipse = (tuple(float(v) for v in face.center), (_FACE_HALF_WIDTH * w, _FACE_HALF_HEIGHT * h), angle)
        chin = np.array(face.center) - up * 0.5 * h
        shoulders = chin - up * _SHOULDER_DROP * h
        # run the body down to the image's bottom edge (or further, if the face is tilted)
        reach = max(0.0, (image_size[1] - shoulders[1])) + 2 * h
        bottom = shoulders - up * reach
        body = (
            tuple(chin - side * _NECK_HALF_WIDTH * w),
            tuple(chin + side * _NECK_HALF_WIDTH * w),
            tuple(shoulders + side * _SHOULDER_HALF_WIDTH * w),
            tuple(bottom + side * _SHOULDER_HALF_WIDTH * w),
            tuple(bottom - side * _SHOULDER_HALF_WIDTH * w),
            tuple(shoulders - side * _SHOULDER_HALF_WIDTH * w),
        )
        return cls(face=face_ellipse, head=head, body=tuple((float(x), float(y)) for x, y in body),
                   image_size=tuple(image_size))

    def mask(self, width: int, height: int, part: str = "person") -> np.ndarray:
        """The region as a float32 `[height, width]` mask in [0, 1].

        Args:
            width (`int`), height (`int`): the mask's size; coordinates are scaled from `image_size`.
            part (`str`, defaults to `"person"`): `"face"`, `"head"`, `"body"` or `"person"` (head and body).
        """
        if part not in ("face", "head", "body", "person"):
            raise ValueError(f"part must be 'face', 'head', 'body' or 'person', got {part!r}")
        if width < 1 or height < 1:
            raise ValueError(f"mask size must be at least 1x1, got {width}x{height}")
        s = max(1, min(_SUPERSAMPLE, 2048 // max(width, height)))  # bound the canvas for large masks
        sx, sy = width * s / self.image_size[0], height * s / self.image_size[1]
        canvas = np.zeros((height * s, width * s), dtype=np.uint8)
        # fillPoly puts integer coordinates on pixel centres; ours are continuous (pixel i spans [i, i+1)),
        # hence the -0.5 below
        if part in ("body", "person"):
            poly = np.round((np.array(self.body) * [sx, sy] - 0.5) * 16).astype(np.int32)  # 4 fractional bits
            cv2.fillPoly(canvas, [poly], 255, lineType=cv2.LINE_8, shift=4)
        for name, ellipse in (("head", self.head), ("face", self.face)):
            if part == name or (part == "person" and name == "head"):
                cv2.fillPoly(canvas, [_ellipse_polygon(ellipse, sx, sy)], 255, lineType=cv2.LINE_8, shift=4)
        small = cv2.resize(canvas.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_AREA)
        return np.clip(small, 0.0, 1.0)


def _ellipse_polygon(ellipse: tuple, sx: float, sy: float) -> np.ndarray:
    """A tilted ellipse as a fixed-point polygon in a frame scaled by (sx, sy); see `Region.mask` for the -0.5."""
    (cx, cy), (ax, ay), angle = ellipse
    # an ellipse in a non-uniformly scaled frame is drawn as a polygon of the scaled outline
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    xs = cx + ax * np.cos(t) * c - ay * np.sin(t) * s
    ys = cy + ax * np.cos(t) * s + ay * np.sin(t) * c
    return np.round((np.stack([xs * sx, ys * sy], 1) - 0.5) * 16).astype(np.int32)


def dilated_face_mask(face: Face, width: int, height: int, growth: float, threshold: float = 0.0) -> np.ndarray:
    """The face ellipse of `Region.from_face` (pixels above `threshold`), grown by `growth` of the face size
    with an elliptical kernel: a binary `[height, width]` mask of the face area to hide or regenerate."""
    ellipse = Region.from_face(face, (width, height)).mask(width, height, "face") > threshold
    grow = max(1, round(growth * max(face.width, face.height)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(ellipse.astype(np.uint8), kernel).astype(bool)


def person_regions(faces: list[Face], image_size: tuple[int, int]) -> list[Region]:
    """One `Region` per face, in the same order."""
    return [Region.from_face(face, image_size) for face in faces]


def person_masks(regions: list[Region], width: int, height: int, part: str = "person") -> np.ndarray:
    """Masks `[N, height, width]` for several people, made disjoint.

    Where people's regions overlap, each pixel goes to the person whose head centre is nearest in units of
    their head size, so a front person's body does not claim the face of someone behind. The masks' sum
    never exceeds 1.
    """
    if not regions:
        return np.zeros((0, height, width), dtype=np.float32)
    masks = np.stack([r.mask(width, height, part) for r in regions])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    distance = []
    for r in regions:
        (cx, cy), (ax, ay), _ = r.head
        sx, sy = width / r.image_size[0], height / r.image_size[1]
        scale = max(ax * sx, ay * sy, 1e-6)
        distance.append(np.hypot(xs - cx * sx, ys - cy * sy) / scale)
    distance = np.where(masks > 0, np.stack(distance), np.inf)
    owner = np.argmin(distance, axis=0)
    keep = np.arange(len(regions))[:, None, None] == owner[None]
    return np.where(keep, masks, 0.0).astype(np.float32)
