"""Scoring a set of generated images: references resolved, each image scored, what could not be, listed.

Nothing here stops at the first bad input: an image without metadata, an identity whose photos show no
face, a CLIP model that cannot be loaded each become one line in `Evaluation.skipped`, and the rest runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import FaceStudioError
from ..imaging import load_image
from .records import ImageRecord
from .scoring import ImageScore, Reference, Scorer

logger = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """One image's scores: faces (None when the image could not be scored) and CLIP score."""

    record: ImageRecord
    score: ImageScore | None
    clip: float | None = None


@dataclass
class Evaluation:
    """Everything a report shows."""

    results: list[ImageResult]
    references: dict[str, Reference]
    skipped: list[tuple[str, str]]
    clip_model: str | None = None
    tuning: list[dict] = field(default_factory=list)
    run: dict = field(default_factory=dict)


def resolve_references(records: Sequence[ImageRecord], scorer: Scorer, given: Mapping[str, Sequence] = {},
                       held_out: Mapping[str, Sequence] = {}, photo_dirs: Sequence[Path] = ()):
    """The reference of every person the records name: photos from `given`, else the photo names in the
    metadata looked up in `photo_dirs`. Returns `(references, skipped)`."""
    names = list(dict.fromkeys([*given, *(n for r in records for n in r.scored_as)]))
    recorded = {}
    for record in records:
        for name, photos in zip(record.identities, record.photos):
            recorded.setdefault(name, photos)
    references, skipped = {}, []
    for name in names:
        photos = list(given.get(name) or [])
        if not photos:
            wanted = recorded.get(name, ())
            found = [next((d / p for d in photo_dirs if (d / p).is_file()), None) for p in wanted]
            if not wanted or None in found:
                missing = [p for p, f in zip(wanted, found) if f is None]
                skipped.append((f"identity {name}", "reference photos not found"
                                + (f" ({', '.join(missing)} not in --photos folders)" if missing else "")
                                + f"; give --identity {name}=PHOTO[,PHOTO...]"))
                continue
            photos = found
        try:
            references[name] = scorer.reference(name, photos, held_out.get(name, ()))
        except FaceStudioError as e:
            skipped.append((f"identity {name}", str(e)))
    return references, skipped


def score_records(records: Sequence[ImageRecord], references: Mapping[str, Reference], scorer: Scorer,
                  clip=None, progress: bool = False) -> tuple[list[ImageResult], list[tuple[str, str]]]:
    """Score each image against its people (and its prompt when `clip` is given)."""
    from tqdm import tqdm

    results, skipped = [], []
    for record in tqdm(records, desc="scoring", unit="image", disable=not progress or None):
        missing = [n for n in record.scored_as if n not in references]
        if missing:
            skipped.append((record.path.name, f"identity {', '.join(missing)} has no usable reference"))
            continue
        try:
            image = load_image(record.path, name=record.path.name)
        except FaceStudioError as e:
            skipped.append((record.path.name, str(e)))
            continue
        people = [references[n] for n in record.scored_as]
        score = scorer.score_image(image, people, record.regions or None, record.mixed) if people else None
        clip_score = clip.score([image], [record.prompt])[0] if clip is not None and record.prompt else None
        results.append(ImageResult(record, score, clip_score))
    return results, skipped
