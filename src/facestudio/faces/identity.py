"""Face recognisers: an L2-normalised identity embedding per aligned face, and how to compare two.

Recognisers sit behind one small interface (`Recognizer`) so that the generator can be conditioned on one
and evaluated with another. Shipped today: dlib's 128-d ResNet (`face-recognition-models`, from
dlib's own C++ runtime or from facestudio's PyTorch port, which gives the same numbers and gradients).

Same-person thresholds (cosine similarity of normalised embeddings):

* dlib: **0.91**. dlib documents a Euclidean distance of 0.6 between raw descriptors as its same-person
  threshold (99.38% on LFW). Its raw descriptors have a norm of 1.36-1.43 on the bundled photos (mean 1.39),
  and `|a - b|^2 = 2 r^2 (1 - cos)` turns 0.6 into `cos = 1 - 0.18 / 1.39^2 = 0.907`. On the bundled photos
  (six photos, two people) same-person pairs score 0.95-1.00 and Obama-Biden pairs 0.80-0.84.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .model_files import dlib_model_file

#: Cosine similarity at or above which two faces are judged the same person, per recogniser. ArcFace's is the
#: usual value for insightface's w600k_r50, not measured here (its weights cannot be had offline; see arcface.py).
SAME_PERSON_THRESHOLDS = {"dlib": 0.91, "arcface": 0.35}


@dataclass(frozen=True)
class Embedding:
    """An L2-normalised identity vector and the recogniser that made it.

    Attributes:
        vector (`np.ndarray`): float32 `[D]`, unit length, read-only.
        model (`str`): the recogniser's name; embeddings of different models cannot be compared.
    """

    vector: np.ndarray = field(repr=False)
    model: str

    def __post_init__(self):
        vector = np.array(self.vector, dtype=np.float32).reshape(-1)
        vector.setflags(write=False)
        object.__setattr__(self, "vector", vector)

    def similarity(self, other: "Embedding") -> float:
        """Cosine similarity with another embedding of the same model."""
        return cosine_similarity(self, other)


def cosine_similarity(a: Embedding, b: Embedding) -> float:
    """Cosine similarity of two embeddings made by the same recogniser.

    Raises:
        ValueError: the embeddings come from different recognisers.
    """
    if a.model != b.model:
        raise ValueError(f"cannot compare a {a.model!r} embedding with a {b.model!r} embedding")
    return float(np.clip(np.dot(a.vector, b.vector), -1.0, 1.0))


def is_same_person(similarity: float, model: str) -> bool:
    """The verdict for a similarity under `model`'s documented threshold."""
    return similarity >= SAME_PERSON_THRESHOLDS[model]


class Recognizer(Protocol):
    """What a recogniser backend provides."""

    name: str
    template: str
    input_size: int

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings `[N, D]` of aligned RGB `uint8` crops `[N, S, S, 3]`."""


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class DlibRecognizer:
    """dlib's face-recognition ResNet (128-d) on 150 px crops aligned to the `"dlib"` template.

    Args:
        backend (`str`, defaults to `"torch"`): `"torch"` runs facestudio's PyTorch port (batched,
            differentiable; equal to dlib within 1e-4), `"dlib"` runs dlib's C++ network.
        device (`str`, defaults to `"cpu"`): torch device for the `"torch"` backend.
    """

    name = "dlib"
    template = "dlib"
    input_size = 150

    def __init__(self, backend: str = "torch", device: str = "cpu"):
        if backend not in ("torch", "dlib"):
            raise ValueError(f"unknown dlib recogniser backend {backend!r}; use 'torch' or 'dlib'")
        self.backend = backend
        self.device = device
        self._path = dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:  # several server threads may ask at once; load once
            if self._model is None:
                if self.backend == "torch":
                    from .dlib_resnet import DlibFaceResNet

                    self._model = DlibFaceResNet.from_dat(self._path).to(self.device).eval().requires_grad_(False)
                else:
                    import dlib

                    self._model = dlib.face_recognition_model_v1(str(self._path))
        return self._model

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = self._check(crops)
        model = self._load()
        if self.backend == "dlib":
            raw = np.array(model.compute_face_descriptor(list(crops)), dtype=np.float32).reshape(len(crops), -1)
        else:
            import torch

            with torch.inference_mode():
                batch = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float()
                raw = model(batch).cpu().numpy()
        return l2_normalize(raw)

    def embed_crops_with_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised embeddings `[N, 128]` and detail maps `[N, 128, 8, 8]` (torch backend only)."""
        if self.backend != "torch":
            raise ValueError("feature maps need the torch backend of the dlib recogniser")
        crops = self._check(crops)
        model = self._load()
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float()
            raw, features = model.forward_with_features(batch)
        return l2_normalize(raw.cpu().numpy()), features.float().cpu().numpy()

    @staticmethod
    def _check(crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (150, 150, 3):
            raise ValueError(f"dlib recogniser needs crops of shape [N, 150, 150, 3], got {list(crops.shape)}")
        return crops
