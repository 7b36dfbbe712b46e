"""Scoring one image: its faces, each matched to a requested person, scored by two recognisers.

SFace (`sface.py`) is the primary judge: matching and the headline numbers use it. dlib's recogniser, the
one facestudio conditions on, is reported beside it as a second opinion: a gap between the two (high dlib,
low SFace) is the sign of a generator that fits its own recogniser rather than the person.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..faces.analysis import FaceAnalyzer, select_face
from ..faces.detection import Face, YuNetDetector
from ..faces.identity import SAME_PERSON_THRESHOLDS, DlibRecognizer
from ..imaging import load_image, to_array
from .matching import is_confused, match_faces
from .sface import SFACE_THRESHOLD, SFaceRecognizer

logger = logging.getLogger(__name__)

#: The recogniser that matches faces to people and gives the headline numbers.
PRIMARY = "sface"

#: Same-person thresholds (cosine) of the evaluation recognisers; see docs/evaluation.md.
THRESHOLDS = {"sface": SFACE_THRESHOLD, "dlib": SAME_PERSON_THRESHOLDS["dlib"]}


@dataclass(frozen=True)
class Reference:
    """One person as the evaluation recognisers see them.

    Attributes:
        name (`str`): the identity's name, as in the generated images' metadata.
        photos (`tuple[str, ...]`): the reference photos (what the generator was given).
        embeddings (`dict[str, np.ndarray]`): recogniser -> `[P, D]` embeddings of the reference photos.
        held_out (`dict[str, np.ndarray]`): recogniser -> `[Q, D]` embeddings of held-out photos of the same
            person (never given to the generator); `Q` may be 0.
    """

    name: str
    photos: tuple[str, ...]
    embeddings: dict[str, np.ndarray] = field(repr=False)
    held_out: dict[str, np.ndarray] = field(repr=False)

    def similarity(self, recognizer: str, vectors: np.ndarray, held_out: bool = False) -> np.ndarray | None:
        """Mean cosine of each row of `vectors` `[F, D]` to this person's reference (or held-out) photos."""
        bank = (self.held_out if held_out else self.embeddings)[recognizer]
        if len(bank) == 0:
            return None
        return (np.asarray(vectors) @ bank.T).mean(axis=1)


@dataclass(frozen=True)
class PersonScore:
    """One requested person in one image.

    Attributes:
        identity (`str`): the person's name.
        slot (`int`): their position among the image's requested people (region `slot`).
        face (`int | None`): index of the matched face among the image's faces, None if no face was left.
        box (`tuple | None`): the matched face's box.
        similarity (`dict[str, float]`): recogniser -> mean cosine to the reference photos.
        held_out (`dict[str, float]`): recogniser -> mean cosine to the held-out photos (empty if none).
        in_region (`bool | None`): whether the face's centre lies in the person's requested region.
        confused (`bool | None`): the face is more similar to another requested person (SFace); None alone.
    """

    identity: str
    slot: int
    face: int | None
    box: tuple | None = None
    similarity: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)
    in_region: bool | None = None
    confused: bool | None = None


@dataclass(frozen=True)
class ImageScore:
    """Every requested person of one image, and the faces found in it."""

    faces: int
    people: tuple[PersonScore, ...]
    face_vectors: dict = field(default_factory=dict, repr=False)  # recogniser -> [faces, D], for diversity


class Scorer:
    """Detect, embed with SFace and dlib, match to the requested people.

    Args:
        detector: defaults to `YuNetDetector()` (the same detector for references and outputs, so that
            alignment errors do not differ between them).
        recognizers (`dict`, *optional*): name -> recogniser; defaults to SFace and dlib.
    """

    def __init__(self, detector=None, recognizers: dict | None = None):
        self.detector = detector if detector is not None else YuNetDetector()
        self.recognizers = recognizers if recognizers is not None else \
            {"sface": SFaceRecognizer(), "dlib": DlibRecognizer()}
        #: recogniser name -> an analyzer of that recogniser, all sharing `detector`
        self.analyzers = {name: FaceAnalyzer(self.detector, rec) for name, rec in self.recognizers.items()}

    def detect(self, image: np.ndarray) -> list[Face]:
        return next(iter(self.analyzers.values())).detect(image)  # they share one detector

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> dict[str, np.ndarray]:
        """recogniser -> `[len(faces), D]` normalised embeddings."""
        return {name: np.stack([e.vector for e in analyzer.embed_faces(image, faces)]) if faces
                else np.zeros((0, 128), np.float32) for name, analyzer in self.analyzers.items()}

    def photo_embeddings(self, photos: Sequence, label: str) -> dict[str, np.ndarray]:
        """Each photo's one clear face, embedded. Raises `NoFaceError`/`AmbiguousFaceError` naming the photo."""
        rows = {name: [] for name in self.recognizers}
        for photo in photos:
            name = f"{label}: {Path(photo).name}" if isinstance(photo, (str, Path)) else label
            image = to_array(load_image(photo, name=name))
            face = select_face(self.detect(image), source=name)
            for rec, vectors in self.embed(image, [face]).items():
                rows[rec].append(vectors[0])
        return {rec: np.stack(v) if v else np.zeros((0, 128), np.float32) for rec, v in rows.items()}

    def reference(self, name: str, photos: Sequence, held_out: Sequence = ()) -> Reference:
        """A person's reference (and held-out) photos, embedded."""
        if not photos:
            raise ValueError(f"identity {name}: no reference photos")
        return Reference(name, tuple(str(p) for p in photos), self.photo_embeddings(photos, f"identity {name}"),
                         self.photo_embeddings(held_out, f"identity {name} (held out)"))

    def score_image(self, image: Image.Image | np.ndarray, people: Sequence[Reference],
                    regions: Sequence[tuple | None] | None = None, mixed: bool = False) -> ImageScore:
        """Score one generated image against the people requested for it.

        Args:
            image: the generated image.
            people: the requested identities, in the order of the generation's identities.
            regions: each person's requested box `(x0, y0, x1, y1)`, or None for the generator's default
                (the whole image for one person, left-to-right strips for several).
            mixed: the people were blended into one face: the largest face is scored against each of them,
                with no matching.
        """
        array = to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
        faces = self.detect(array)
        vectors = self.embed(array, faces)
        if mixed:
            chosen = [0 if faces else None] * len(people)
            confusion = [None] * len(people)
        else:
            primary = np.stack([p.similarity(PRIMARY, vectors[PRIMARY]) for p in people], axis=1) if faces \
                else np.zeros((0, len(people)))
            matches = {m.identity: m for m in match_faces(primary)}
            chosen = [matches[i].face if i in matches else None for i in range(len(people))]
            confusion = [is_confused(primary, matches[i]) if i in matches and len(people) > 1 else None
                         for i in range(len(people))]
        boxes = _regions(regions, len(people), array.shape[1], array.shape[0]) if not mixed else [None] * len(people)
        scores = []
        for slot, (person, face) in enumerate(zip(people, chosen)):
            if face is None:
                scores.append(PersonScore(person.name, slot, None))
                continue
            row = {rec: v[face:face + 1] for rec, v in vectors.items()}
            similarity = {rec: float(person.similarity(rec, row[rec])[0]) for rec in row}
            held = {rec: float(s[0]) for rec in row if (s := person.similarity(rec, row[rec], True)) is not None}
            scores.append(PersonScore(person.name, slot, face, tuple(round(v, 1) for v in faces[face].box),
                                      similarity, held, centre_inside(faces[face], boxes[slot]), confusion[slot]))
        return ImageScore(len(faces), tuple(scores), vectors)


def _regions(regions, count: int, width: int, height: int) -> list[tuple | None]:
    """Each person's box, with the pipeline's defaults: the whole image alone, else left-to-right strips."""
    regions = list(regions) if regions is not None else [None] * count
    regions += [None] * (count - len(regions))
    boxes = []
    for i, box in enumerate(regions):
        boxes.append(tuple(float(v) for v in box) if box is not None else strip(i, count, width, height))
    return boxes


def strip(slot: int, count: int, width: float, height: float) -> tuple[float, float, float, float]:
    """The default box of person `slot` of `count`: the `slot`-th of `count` equal left-to-right strips (the
    whole image for one person)."""
    return (slot * width / count, 0.0, (slot + 1) * width / count, float(height))


def centre_inside(face: Face, box: tuple | None) -> bool | None:
    """Whether the face's centre lies in `box` `(x0, y0, x1, y1)`, edges included; None without a box."""
    if box is None:
        return None
    x, y = face.center
    return bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])
