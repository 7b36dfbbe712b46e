"""People as MediaPipe's selfie-segmentation model sees them: person probability, split between people by face.

The model (`weights/selfie_segmentation.tflite`, Apache-2.0, from the npm package `@mediapipe/selfie_segmentation`)
reads RGB / 255 at 256 x 256 and gives each pixel's probability of belonging to a person, any person: it does not
tell people apart. `split_by_nearest_face` gives each pixel to the person whose head is nearest, so the masks
are disjoint and each follows its person's silhouette. It runs on `ai-edge-litert` (the `segment` extra).
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import FaceStudioError
from ..faces.model_files import verified_file
from ..faces.regions import Region

MODEL_FILE = Path(__file__).with_name("weights") / "selfie_segmentation.tflite"
MODEL_SHA256 = "8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27"
INPUT_SIDE = 256
#: Below this probability a pixel is background and belongs to nobody.
BACKGROUND = 0.05
#: Below a head's centre, vertical distance counts this much: a body hangs under its face.
_BELOW_WEIGHT = 0.25


#: The one message when the runtime is missing.
MISSING = "person segmentation needs ai-edge-litert: pip install 'facestudio[segment]'"


def installed() -> bool:
    """Whether the `segment` extra's runtime is installed (looked up without importing it)."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def require_installed() -> None:
    """Raise `FaceStudioError` naming the extra unless its runtime is installed."""
    if not installed():
        raise FaceStudioError(MISSING)


class PersonSegmenter:
    """MediaPipe selfie segmentation on `ai-edge-litert`. Safe to share between threads (one run at a time)."""

    def __init__(self, model_file: str | Path | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise FaceStudioError(MISSING) from None
        path = verified_file(MODEL_FILE, MODEL_SHA256) if model_file is None else Path(model_file)
        self._interpreter = Interpreter(model_path=str(path))
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def probability(self, image: np.ndarray) -> np.ndarray:
        """`[H, W]` float32 person probability of an RGB uint8 image `[H, W, 3]`, at the image's size."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise FaceStudioError(f"person segmentation reads an RGB image, got shape {list(image.shape)}")
        height, width = image.shape[:2]
        small = cv2.resize(image, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_AREA)
        x = (small.astype(np.float32) / 255.0)[None]
        with self._lock:
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            out = self._interpreter.get_tensor(self._output)[0, :, :, 0].copy()
        return np.clip(cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def default_segmenter() -> PersonSegmenter:
    """The shipped model, loaded once per process."""
    return PersonSegmenter()


def split_by_nearest_face(probability: np.ndarray, faces, image_size: tuple[int, int]) -> np.ndarray:
    """Disjoint per-person masks `[N, H, W]` from a person probability `[H, W]` and the people's faces.

    Each pixel above `BACKGROUND` goes to the person whose head centre is nearest, in units of that head's
    size, counting distance below the head a quarter (bodies hang under faces, neighbours stand beside).

    Args:
        probability (`np.ndarray`): `[H, W]` in [0, 1], at the mask size.
        faces: the people's detected `Face`s in the coordinates of an image of `image_size` `(width, height)`.
    """
    height, width = probability.shape
    if not faces:
        return np.zeros((0, height, width), np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    sx, sy = width / image_size[0], height / image_size[1]
    distance = []
    for face in faces:
        (cx, cy), (ax, ay), _ = Region.from_face(face, image_size).head
        dy = ys - cy * sy
        dy = np.where(dy > 0, dy * _BELOW_WEIGHT, dy)
        distance.append(np.hypot(xs - cx * sx, dy) / max(ax * sx, ay * sy, 1e-6))
    owner = np.argmin(np.stack(distance), axis=0)
    person = np.where(probability > BACKGROUND, probability, 0.0)
    return np.stack([np.where(owner == i, person, 0.0) for i in range(len(faces))]).astype(np.float32)
