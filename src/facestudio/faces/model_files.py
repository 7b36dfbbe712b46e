"""Where the face models' files are: shipped with facestudio or inside an installed package.

Nothing here downloads. A missing or damaged file raises :class:`ModelFileError` saying how to get it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from ..errors import ModelFileError

_WEIGHTS = Path(__file__).with_name("weights")

#: Files committed under `faces/weights/`, with the sha256 they must have.
SHIPPED = {
    "face_detection_yunet_2023mar_int8bq.onnx": "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
}


def shipped_file(filename: str) -> Path:
    """A model file committed with facestudio, checked against its sha256 once per process."""
    return _verified(_WEIGHTS / filename, SHIPPED[filename])


def verified_file(path: Path, sha256: str) -> Path:
    """Any model file checked against its sha256 once per process (a missing or damaged one raises)."""
    return _verified(Path(path), sha256)


@functools.lru_cache(maxsize=None)
def _verified(path: Path, sha256: str) -> Path:
    if not path.is_file():
        raise ModelFileError(f"{path}: model file missing from the facestudio install; reinstall facestudio")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise ModelFileError(f"{path}: model file is damaged (sha256 {digest}, expected {sha256}); "
                             "reinstall facestudio")
    return path


def dlib_model_file(filename: str) -> Path:
    """A dlib model file from the `face-recognition-models` package.

    The package is located without importing it: its `__init__` needs `pkg_resources`, which recent
    setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("the dlib face models are not installed: pip install face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise ModelFileError(f"{path}: dlib model file missing; reinstall face-recognition-models")
    return path
