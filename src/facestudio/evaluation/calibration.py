"""Checking the metric itself: on photos whose people are known, do the recognisers and thresholds agree?

Before trusting "identity similarity 0.42" on generated images, score real photos treated as outputs: every
same-person pair should score at or above the recogniser's threshold and every different-person pair below.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import FaceStudioError
from .scoring import THRESHOLDS, Scorer


@dataclass(frozen=True)
class Pair:
    """Two photos, whether they show the same person, and each recogniser's cosine similarity."""

    a: str
    b: str
    same: bool
    similarity: dict


@dataclass(frozen=True)
class Calibration:
    """All pairs, the photos that could not be used, and per recogniser how many verdicts were right."""

    pairs: tuple[Pair, ...]
    skipped: tuple[tuple[str, str], ...]

    def summary(self) -> dict[str, dict]:
        """recogniser -> threshold, lowest same-person and highest different-person score, correct verdicts."""
        out = {}
        for rec, threshold in THRESHOLDS.items():
            same = [p.similarity[rec] for p in self.pairs if p.same]
            different = [p.similarity[rec] for p in self.pairs if not p.same]
            correct = sum(s >= threshold for s in same) + sum(d < threshold for d in different)
            out[rec] = {"threshold": threshold, "same_min": min(same, default=None),
                        "different_max": max(different, default=None), "correct": correct, "pairs": len(self.pairs)}
        return out


def calibrate(people: Mapping[str, Sequence[str | Path]], scorer: Scorer | None = None) -> Calibration:
    """Score every pair of photos of `people` (name -> photos); a photo without one clear face is skipped."""
    scorer = scorer or Scorer()
    vectors, skipped = [], []
    for name, photos in people.items():
        for photo in photos:
            try:
                embedded = scorer.photo_embeddings([photo], f"person {name}")
            except FaceStudioError as e:
                skipped.append((str(photo), str(e)))
                continue
            vectors.append((name, Path(photo).name, {rec: v[0] for rec, v in embedded.items()}))
    if len(vectors) < 2:
        raise FaceStudioError("calibration needs at least two photos with a face")
    pairs = tuple(Pair(a, b, pa == pb, {rec: float(va[rec] @ vb[rec]) for rec in va})
                  for (pa, a, va), (pb, b, vb) in itertools.combinations(vectors, 2))
    return Calibration(pairs, tuple(skipped))
