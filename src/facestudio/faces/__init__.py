"""People in images: detection, alignment, recognition and per-person regions."""

from .alignment import ARCFACE, DLIB, FFHQ, TEMPLATES, AlignedFace, Template, align_face, estimate_similarity, paste_back
from .analysis import FaceAnalyzer, select_face
from .detection import LANDMARK_NAMES, Face, YuNetDetector
from .identity import SAME_PERSON_THRESHOLDS, DlibRecognizer, Embedding, cosine_similarity, is_same_person
from .regions import Region, person_masks, person_regions

__all__ = [
    "ARCFACE", "DLIB", "FFHQ", "TEMPLATES", "AlignedFace", "Template", "align_face", "estimate_similarity", "paste_back",
    "FaceAnalyzer", "select_face",
    "LANDMARK_NAMES", "Face", "YuNetDetector",
    "SAME_PERSON_THRESHOLDS", "DlibRecognizer", "Embedding", "cosine_similarity", "is_same_person",
    "Region", "person_masks", "person_regions",
]
