"""facestudio: tuning-free, identity-preserving image generation."""

import logging as _logging

from .errors import AmbiguousFaceError, FaceStudioError, ImageError, ModelFileError, NoFaceError
from .faces import Embedding, Face, FaceAnalyzer, cosine_similarity
from .imaging import load_image, save_png


class _TorchvisionFallbackNote(_logging.Filter):
    """Drops transformers 5's note, printed whenever diffusers is imported, that the CLIP and SigLIP image
    processors use their PIL backend because torchvision is absent: facestudio needs no torchvision (its PyPI
    build does not import beside the CPU torch build) and wants exactly that backend."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNote())

__version__ = "0.1.0"

__all__ = [
    "AmbiguousFaceError", "FaceStudioError", "ImageError", "ModelFileError", "NoFaceError",
    "Embedding", "Face", "FaceAnalyzer", "cosine_similarity",
    "load_image", "save_png",
]
