"""Evaluation: identity similarity with a recogniser the generator never sees, matching, baselines, reports.

The stages, one module each: `sface` (the evaluation recogniser), `scoring` (one image: detect, embed with
SFace and dlib, match to the requested people), `matching` (Hungarian assignment), `records` (what an image
was asked to show, from its metadata), `evaluate` (a set of images, with what was skipped), `metrics` (the
tables), `baselines` (no identity, paste, tuning cost), `runspec` (generate a grid of images), `timing`,
`clipscore`, `charts` and `report`. See docs/evaluation.md.
"""

from .calibration import calibrate
from .matching import match_faces
from .scoring import PRIMARY, THRESHOLDS, Scorer
from .sface import SFACE_THRESHOLD, SFaceRecognizer

__all__ = ["calibrate", "match_faces", "PRIMARY", "THRESHOLDS", "Scorer", "SFACE_THRESHOLD", "SFaceRecognizer"]
