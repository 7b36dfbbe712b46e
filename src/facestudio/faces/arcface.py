"""ArcFace: insightface's `buffalo_l` recogniser (`w600k_r50.onnx`) on onnxruntime, without `insightface`.

IP-Adapter-FaceID and PhotoMaker v2 were trained on this network's 512-d embedding (FaceID on the
L2-normalised `normed_embedding`). Any other network, even another ArcFace ResNet, embeds faces in a different
space, so a FaceID checkpoint needs this exact file.

**The model file.** facestudio never bundles it, and downloads it only when the user accepts its licence
(`facestudio download buffalo_l --accept-license insightface-noncommercial`, `downloads.py`). It is
`w600k_r50.onnx` inside insightface's `buffalo_l.zip` (model zoo:
https://github.com/deepinsight/insightface/tree/master/python-package), unpacked where insightface itself puts
it, `~/.insightface/models/buffalo_l/w600k_r50.onnx`. insightface's code
is MIT, but its pretrained models are for **non-commercial research only**. For other uses, insightface says
to contact `recognition-oss-pack@insightface.ai`.

**Input convention.** This follows insightface's `model_zoo/arcface_onnx.py` (`ArcFaceONNX`):

* the crop is aligned onto the `"arcface"` 5-point template at 112 px (`alignment.ARCFACE`, `arcface_dst`);
* the network takes RGB, NCHW float32 `(x - input_mean) / input_std`. insightface feeds BGR crops to
  `cv2.dnn.blobFromImages(..., swapRB=True)`; facestudio's crops are RGB already, so nothing is swapped;
* `input_mean = input_std = 127.5` (x in [-1, 1]) for w600k_r50 and every PyTorch-exported recogniser.
  The exception is old MXNet exports, which normalise inside the graph. insightface detects them from the
  names of the graph's first 8 nodes: at least one starting with `Sub` or `_minus` and one with `Mul` or
  `_mul`. Those get `input_mean = 0`, `input_std = 1`. `ArcFaceRecognizer` makes the same check with the
  `onnx` package. Without `onnx` installed it logs this and uses the w600k_r50 convention;
* the output `embedding` is L2-normalised to `normed_embedding` (`app/common.py`).

facestudio's landmarks come from YuNet, not insightface's SCRFD. Crops, and so embeddings, are therefore
close to insightface's but not bit-identical.

**Same-person threshold** (cosine similarity of normalised embeddings): `ARCFACE_SAME_PERSON_THRESHOLD` =
**0.35**. This is *not measured here*: the real weights are not available to facestudio's tests. It is the
middle of the 0.3-0.4 range commonly used for w600k_r50. Values in third-party code vary more widely, so
calibrate on your own pairs before relying on it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelFileError, first_line
from .identity import SAME_PERSON_THRESHOLDS, l2_normalize

logger = logging.getLogger(__name__)

#: Cosine similarity at or above which two w600k_r50 embeddings are judged the same person (not measured
#: here; see the module docstring).
ARCFACE_SAME_PERSON_THRESHOLD = SAME_PERSON_THRESHOLDS["arcface"]

#: `(input_mean, input_std)` of w600k_r50 and other PyTorch-exported insightface recognisers: x in [-1, 1].
W600K_NORMALIZATION = (127.5, 127.5)
#: `(input_mean, input_std)` of MXNet exports, whose graphs subtract and scale themselves.
MXNET_NORMALIZATION = (0.0, 1.0)

INPUT_SIZE = 112
EMBEDDING_SIZE = 512

_MODEL_HELP = ("fetch buffalo_l (insightface's non-commercial research licence) with `facestudio download buffalo_l "
               "--accept-license insightface-noncommercial`, which puts it in ~/.insightface/models/buffalo_l/, or "
               "pass the local path of its w600k_r50.onnx")


class ArcFaceRecognizer:
    """insightface's ArcFace recogniser (buffalo_l's `w600k_r50.onnx`): 512-d, on 112 px `"arcface"` crops.

    The model is loaded and checked when the object is made. onnxruntime sessions are thread-safe for
    `run`, and nothing else changes after construction, so one recogniser can serve several threads.

    Args:
        model_path (`str` or `Path`): local path of `w600k_r50.onnx` (see the module docstring for where to get it).
        providers (`Sequence[str]`, *optional*): onnxruntime execution providers, in order of preference.
            Defaults to CUDA when onnxruntime has it, then CPU.

    Raises:
        ModelFileError: the file is missing, is not a readable ONNX model, or does not take `[N, 3, 112, 112]`
            float input and give a 512-d output; or onnxruntime is not installed.

    Example:
        ```py
        >>> from facestudio import FaceAnalyzer, load_image
        >>> from facestudio.faces.arcface import ArcFaceRecognizer
        >>> analyzer = FaceAnalyzer(recognizer=ArcFaceRecognizer("models/buffalo_l/w600k_r50.onnx"))
        >>> analyzer.embed(load_image("examples/obama.jpg")).vector.shape
        (512,)
        ```
    """

    name = "arcface"
    template = "arcface"
    input_size = INPUT_SIZE
    #: the file this class expects, and where to get it (the model-file errors end with them)
    expected_file = "buffalo_l's w600k_r50.onnx"
    model_help = _MODEL_HELP

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            what = "is a directory, not an ONNX file" if self.model_path.is_dir() else "ArcFace model file not found"
            raise ModelFileError(f"{self.model_path}: {what}; {self.model_help}")
        ort = _import_onnxruntime()
        self.providers = list(providers) if providers is not None else _default_providers(ort)
        try:
            self._session = ort.InferenceSession(str(self.model_path), providers=self.providers)
        except Exception as e:  # onnxruntime raises its own pybind exception types for unreadable models
            raise ModelFileError(f"{self.model_path}: not a readable ONNX model ({first_line(e)}); "
                                 f"{self.model_help}") from e
        self._input_name, self._batch_size = self._check_input()
        self._output_name = self._check_output()
        self.input_mean, self.input_std = input_normalization(self.model_path)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings `[N, 512]` of aligned RGB `uint8` crops `[N, 112, 112, 3]`."""
        return l2_normalize(self.raw_embeddings(crops))

    def raw_embeddings(self, crops: np.ndarray) -> np.ndarray:
        """The network's output `[N, 512]` before normalisation (insightface's `Face.embedding`, which PuLID
        reads), of aligned RGB `uint8` crops `[N, 112, 112, 3]`."""
        crops = self._check_crops(crops)
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        raw = self._run(arcface_blob(crops, self.input_mean, self.input_std))
        raw = raw.reshape(len(crops), -1)
        if raw.shape[1] != EMBEDDING_SIZE:
            raise ModelFileError(f"{self.model_path}: the model gave {raw.shape[1]} values per face, "
                                 f"expected {EMBEDDING_SIZE}; is this {self.expected_file}?")
        return raw.astype(np.float32)

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self._batch_size is None:
            return self._session.run([self._output_name], {self._input_name: blob})[0]
        # a graph exported with a fixed batch size: run in chunks of it, padding the last with zeros
        # (the network treats every face independently in inference, so padding does not change the others)
        outs, size = [], self._batch_size
        for start in range(0, len(blob), size):
            part = blob[start:start + size]
            n = len(part)
            if n < size:
                part = np.concatenate([part, np.zeros((size - n,) + part.shape[1:], part.dtype)])
            outs.append(self._session.run([self._output_name], {self._input_name: part})[0][:n])
        return np.concatenate(outs)

    def _check_input(self) -> tuple[str, int | None]:
        """The input's name and its fixed batch size (None when the batch dimension is dynamic)."""
        inputs = self._session.get_inputs()
        expected = f"one float input of shape [N, 3, {INPUT_SIZE}, {INPUT_SIZE}]"
        if len(inputs) != 1:
            raise self._wrong_kind(f"has {len(inputs)} inputs, expected {expected}")
        shape, kind = list(inputs[0].shape), inputs[0].type
        if len(shape) != 4 or shape[1:] != [3, INPUT_SIZE, INPUT_SIZE] or kind != "tensor(float)":
            raise self._wrong_kind(f"takes {kind} of shape {_show(shape)}, expected {expected}")
        batch = shape[0]
        return inputs[0].name, batch if isinstance(batch, int) and batch > 0 else None

    def _check_output(self) -> str:
        outputs = self._session.get_outputs()
        if len(outputs) != 1:
            raise self._wrong_kind(f"has {len(outputs)} outputs, expected one [N, {EMBEDDING_SIZE}] embedding")
        shape = list(outputs[0].shape)
        per_face = shape[1:]
        if not per_face or not all(isinstance(d, int) for d in per_face) or math.prod(per_face) != EMBEDDING_SIZE:
            raise self._wrong_kind(f"gives output of shape {_show(shape)}, expected [N, {EMBEDDING_SIZE}]")
        return outputs[0].name

    def _wrong_kind(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.model_path}: this ONNX model {problem}, so it is not an ArcFace "
                              f"recogniser like {self.expected_file}")

    @staticmethod
    def _check_crops(crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"ArcFace recogniser needs uint8 RGB crops of shape [N, {INPUT_SIZE}, {INPUT_SIZE}, 3], "
                             f"got {crops.dtype} {list(crops.shape)}")
        return crops


def arcface_blob(crops: np.ndarray, input_mean: float = 127.5, input_std: float = 127.5) -> np.ndarray:
    """insightface's recogniser input: RGB `uint8` crops `[N, S, S, 3]` -> float32 `[N, 3, S, S]`.

    Each value becomes `(x - input_mean) / input_std`; channels stay in RGB order. This is what
    `cv2.dnn.blobFromImages(bgr, 1 / std, size, (mean,) * 3, swapRB=True)` gives for BGR crops.
    """
    blob = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray((blob - np.float32(input_mean)) / np.float32(input_std))


def input_normalization(model_path: str | Path) -> tuple[float, float]:
    """`(input_mean, input_std)` for an insightface recogniser file, found as insightface's `ArcFaceONNX` does.

    MXNet exports do their own normalisation. insightface recognises them when the first 8 graph nodes include
    a node named `Sub...`/`_minus...` and one named `Mul...`/`_mul...`. Those use `MXNET_NORMALIZATION`;
    everything else, w600k_r50 included, uses `W600K_NORMALIZATION`. Without the `onnx` package the graph
    cannot be read, so the w600k_r50 convention is assumed.
    """
    try:
        import onnx
    except ImportError:
        logger.info("%s: the onnx package is not installed, so the graph is not checked for an MXNet export; "
                    "assuming w600k_r50's input convention (x - 127.5) / 127.5", model_path)
        return W600K_NORMALIZATION
    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{model_path}: not a readable ONNX model ({first_line(e)})") from e
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    if has_sub and has_mul:
        logger.info("%s: graph starts with Sub/Mul nodes (an MXNet export); feeding it raw 0-255 RGB", model_path)
        return MXNET_NORMALIZATION
    return W600K_NORMALIZATION


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelFileError("the ArcFace recogniser needs onnxruntime: pip install 'facestudio[arcface]'") from e
    return onnxruntime


def _default_providers(ort) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def _show(shape: list) -> str:
    """A shape as `[N, 3, 112, 112]`: the batch dimension as N when it is dynamic, other dynamic ones quoted."""
    dims = [str(d) if isinstance(d, int) else "N" if i == 0 else repr(d) for i, d in enumerate(shape)]
    return "[" + ", ".join(dims) + "]"

