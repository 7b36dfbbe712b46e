"""`FaceAnalyzer`: detection, alignment and recognition behind one object, and choosing one face of several."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import AmbiguousFaceError, NoFaceError
from ..imaging import to_array
from .alignment import AlignedFace, align_face
from .detection import Face, FaceDetector, YuNetDetector
from .identity import DlibRecognizer, Embedding, Recognizer

logger = logging.getLogger(__name__)

#: With no face chosen, the largest face is used only if it is at least this many times the area of the next.
DOMINANT_FACE_RATIO = 2.0


class FaceAnalyzer:
    """Find, align and recognise faces.

    Models are loaded on first use, from files shipped with facestudio or its dependencies; nothing is
    downloaded. One analyzer can be shared by threads.

    Args:
        detector (`FaceDetector`, *optional*): defaults to `YuNetDetector()`.
        recognizer (`Recognizer`, *optional*): defaults to `DlibRecognizer()` (the PyTorch port).

    Example:
        ```py
        >>> from facestudio import FaceAnalyzer, load_image
        >>> analyzer = FaceAnalyzer()
        >>> image = load_image("examples/obama.jpg")
        >>> faces = analyzer.detect(image)
        >>> a = analyzer.embed(image, faces[0])
        >>> b = analyzer.embed(load_image("examples/biden.jpg"))
        >>> round(a.similarity(b), 2)
        0.81
        ```
    """

    def __init__(self, detector: FaceDetector | None = None, recognizer: Recognizer | None = None):
        self.detector = detector if detector is not None else YuNetDetector()
        self.recognizer = recognizer if recognizer is not None else DlibRecognizer()

    def detect(self, image: Image.Image | np.ndarray) -> list[Face]:
        """All faces in an image, largest first."""
        return self.detector.detect(_rgb_array(image))

    def align(self, image: Image.Image | np.ndarray, face: Face, template: str = "arcface",
              size: int | None = None) -> AlignedFace:
        """`face` cropped and aligned onto `template` (see `alignment.TEMPLATES`)."""
        return align_face(_rgb_array(image), face.landmark_array(), template, size)

    def embed(self, image: Image.Image | np.ndarray, face: Face | None = None) -> Embedding:
        """The identity embedding of `face`, or of the image's one clear face when `face` is None."""
        array = _rgb_array(image)
        if face is None:
            face = select_face(self.detector.detect(array))
        return self.embed_faces(array, [face])[0]

    def embed_faces(self, image: Image.Image | np.ndarray, faces: Sequence[Face]) -> list[Embedding]:
        """Embeddings of several faces of one image, computed as one batch."""
        if not faces:
            return []
        array = _rgb_array(image)
        crops = np.stack([
            align_face(array, f.landmark_array(), self.recognizer.template, self.recognizer.input_size).image
            for f in faces
        ])
        vectors = self.recognizer.embed_crops(crops)
        return [Embedding(v, self.recognizer.name) for v in vectors]


def select_face(faces: Sequence[Face], index: int | None = None, source: str = "image",
                advice: str = "--face N") -> Face:
    """Pick the face a command should use.

    With `index`, that face (0 is the largest). Without it: the only face, or the largest when it is
    clearly the main one (`DOMINANT_FACE_RATIO` times the area of the next, logged); otherwise ask.
    `advice` names how the caller's user chooses a face ("choose one with ADVICE (0 is the largest)").

    Raises:
        NoFaceError: there is no face.
        AmbiguousFaceError: several faces of similar size and no `index`, or `index` out of range.
    """
    return faces[select_face_index(faces, index, source, advice)]


def select_face_index(faces: Sequence[Face], index: int | None = None, source: str = "image",
                      advice: str = "--face N") -> int:
    """`select_face`, returning the chosen face's index in `faces` instead of the face."""
    if not faces:
        raise NoFaceError(f"{source}: no face found; use a photo where the face is visible and at least "
                          "about 40 pixels across")
    if index is not None:
        if not 0 <= index < len(faces):
            raise AmbiguousFaceError(f"{source}: face {index} asked for, but {len(faces)} face(s) found "
                                     f"(numbered 0 to {len(faces) - 1}, largest first)")
        return index
    if len(faces) == 1:
        return 0
    if faces[0].area >= DOMINANT_FACE_RATIO * faces[1].area:
        logger.info("%s: %d faces found; using face 0, the largest", source, len(faces))
        return 0
    listing = "; ".join(f"{i}: box {[round(v) for v in f.box]}" for i, f in enumerate(faces))
    raise AmbiguousFaceError(f"{source}: {len(faces)} faces of similar size found ({listing}); "
                             f"choose one with {advice} (0 is the largest)")


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return to_array(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {array.dtype} {list(array.shape)}")
    return np.ascontiguousarray(array)
