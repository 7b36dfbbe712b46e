"""facestudio: tuning-free, identity-preserving image generation."""

from .errors import AmbiguousFaceError, FaceStudioError, ImageError, ModelFileError, NoFaceError
from .faces import Embedding, Face, FaceAnalyzer, cosine_similarity
from .imaging import load_image, save_png

__version__ = "0.1.0"

__all__ = [
    "AmbiguousFaceError", "FaceStudioError", "ImageError", "ModelFileError", "NoFaceError",
    "Embedding", "Face", "FaceAnalyzer", "cosine_similarity",
    "load_image", "save_png",
]
