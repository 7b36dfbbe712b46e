"""Face detection: boxes, scores and five landmarks.

The default backend is YuNet (OpenCV model zoo, Apache-2.0, 0.12 MB, shipped in `weights/`): it returns the
five points that face alignment everywhere uses (eye centres, nose tip, mouth corners: the ArcFace /
insightface convention), runs in tens of milliseconds on a CPU, and finds faces cut by the frame that dlib's
HOG detector misses. YuNet's anchors suit faces of roughly 10-400 px, so each image is searched at two sizes
(longest side 640 and 1280) and the results merged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .model_files import shipped_file

#: Names of the five landmarks, in order. "right"/"left" are the person's own, so the right eye is the
#: one on the image's left: the order of insightface's and ArcFace's templates.
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    Attributes:
        box (`tuple[float, float, float, float]`): `(x0, y0, x1, y1)`; may extend past the image edge.
        landmarks (`tuple[tuple[float, float], ...]`): five `(x, y)` points named by `LANDMARK_NAMES`.
        score (`float`): detector confidence in [0, 1].
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def eye_distance(self) -> float:
        """Distance between the eye centres in pixels: the usual measure of how much detail a face has."""
        (x0, y0), (x1, y1) = self.landmarks[0], self.landmarks[1]
        return float(np.hypot(x1 - x0, y1 - y0))

    def landmark_array(self) -> np.ndarray:
        """The landmarks as a `[5, 2]` float32 array."""
        return np.asarray(self.landmarks, dtype=np.float32)

    def scaled(self, factor: float) -> "Face":
        """The same face in an image resized by `factor`."""
        return Face(
            box=tuple(float(v * factor) for v in self.box),
            landmarks=tuple((float(x * factor), float(y * factor)) for x, y in self.landmarks),
            score=self.score,
        )

    def to_dict(self) -> dict:
        """A JSON-ready description."""
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 4),
            "width": round(self.width, 2),
            "height": round(self.height, 2),
            "eye_distance": round(self.eye_distance, 2),
            "landmarks": {n: [round(x, 2), round(y, 2)] for n, (x, y) in zip(LANDMARK_NAMES, self.landmarks)},
        }


class FaceDetector(Protocol):
    """What a detection backend provides."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB `uint8` array `[H, W, 3]`, largest first."""


class YuNetDetector:
    """YuNet through `cv2.FaceDetectorYN`, thread-safe (one OpenCV detector per thread).

    Args:
        score_threshold (`float`, defaults to 0.7): faces scoring below are dropped.
        nms_threshold (`float`, defaults to 0.3): IoU above which overlapping boxes are merged.
        search_sizes (`tuple[int, ...]`, defaults to `(640, 1280)`): longest image sides to search at;
            sizes above the image's own are replaced by the image's size (never upscaled).
    """

    name = "yunet"

    def __init__(
        self,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        search_sizes: tuple[int, ...] = (640, 1280),
    ):
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.search_sizes = tuple(search_sizes)
        self._model_path = str(shipped_file("face_detection_yunet_2023mar_int8bq.onnx"))
        self._local = threading.local()

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        longest = max(h, w)
        sizes = sorted({min(s, longest) for s in self.search_sizes})
        found: list[Face] = []
        for size in sizes:
            scale = size / longest
            resized = bgr if scale == 1 else cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                        interpolation=cv2.INTER_AREA)
            found += [f.scaled(1 / scale) for f in self._run(resized)]
        return sorted(_nms(found, self.nms_threshold), key=lambda f: f.area, reverse=True)

    def _run(self, bgr: np.ndarray) -> list[Face]:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # OpenCV 5 warns per model load
            detector = cv2.FaceDetectorYN.create(self._model_path, "", (320, 320), self.score_threshold,
                                                 self.nms_threshold, 5000)
            self._local.detector = detector
        detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = detector.detect(bgr)
        if rows is None:
            return []
        return [
            Face(
                box=(float(r[0]), float(r[1]), float(r[0] + r[2]), float(r[1] + r[3])),
                landmarks=tuple((float(r[4 + 2 * i]), float(r[5 + 2 * i])) for i in range(5)),
                score=float(r[14]),
            )
            for r in rows
        ]


def _iou(a: Face, b: Face) -> float:
    x0, y0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    x1, y1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _nms(faces: list[Face], threshold: float) -> list[Face]:
    """Merge the searches at several sizes: of overlapping boxes keep the best scored."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(face, k) <= threshold for k in kept):
            kept.append(face)
    return kept
