"""Which detected face is which requested person: the Hungarian algorithm on identity similarity.

With several people in one image, the face nearest the left edge is not necessarily the first identity: the
generator may have swapped them, merged them or drawn one twice. Matching by similarity (one face per
person, the assignment with the highest total similarity; Kuhn's Hungarian method via scipy's
`linear_sum_assignment`) scores each person by their best-fitting face without letting two people claim the
same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Match:
    """Face `face` was assigned to identity `identity` (indices into the similarity matrix)."""

    face: int
    identity: int
    similarity: float


def match_faces(similarity: np.ndarray) -> list[Match]:
    """The one-to-one assignment of faces to identities with the highest total similarity.

    Args:
        similarity (`np.ndarray`): `[faces, identities]` cosine similarities. Rectangular is fine: with fewer
            faces than identities some identities stay unmatched, and the other way round.

    Returns:
        `list[Match]`, sorted by identity.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [faces, identities], got shape {list(similarity.shape)}")
    if 0 in similarity.shape:
        return []
    faces, identities = linear_sum_assignment(similarity, maximize=True)
    return sorted((Match(int(f), int(i), float(similarity[f, i])) for f, i in zip(faces, identities)),
                  key=lambda m: m.identity)


def is_confused(similarity: np.ndarray, match: Match) -> bool:
    """True when the matched face is more similar to another requested identity than to its own."""
    row = np.asarray(similarity, dtype=np.float64)[match.face]
    others = np.delete(row, match.identity)
    return bool(others.size and others.max() > row[match.identity])
