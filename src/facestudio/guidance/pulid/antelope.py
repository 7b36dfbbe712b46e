"""antelopev2's ArcFace recogniser (`glintr100.onnx`), the embedding PuLID reads, on facestudio's ArcFace path.

PuLID takes insightface's `FaceAnalysis(name='antelopev2')` embedding of the largest face: `Face.embedding`,
the network's raw output, **not** L2-normalised (only the EVA-CLIP half of `id_cond` is normalised). The
network is an ArcFace ResNet-100 trained on Glint360K; its input convention is w600k_r50's (112 px `"arcface"`
crop, RGB, `(x - 127.5) / 127.5`), so `ArcFaceRecognizer` runs it, with its own name (its embeddings live in
another space than buffalo_l's) and its own help.

**The model file.** facestudio never downloads or bundles it: it is `glintr100.onnx` inside insightface's
`antelopev2.zip` (model zoo, https://github.com/deepinsight/insightface/tree/master/python-package; PuLID's
demos fetch a copy from the hub repository `DIAMONIK7777/antelopev2`). insightface's pretrained models are
for **non-commercial research only**.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...faces.arcface import ArcFaceRecognizer

FILENAME = "glintr100.onnx"
LICENSE = "non-commercial research only (insightface model zoo)"
LICENCE_NOTICE = ("antelopev2 (glintr100.onnx) is insightface's model: its licence allows non-commercial "
                  "research use only")

_HELP = ("facestudio never downloads or bundles it: get glintr100.onnx from insightface's antelopev2.zip "
         "(https://github.com/deepinsight/insightface/tree/master/python-package; non-commercial research "
         "licence) and pass its local path or the folder that holds it. If insightface has run here, look in "
         "~/.insightface/models/antelopev2/")


class AntelopeRecognizer(ArcFaceRecognizer):
    """antelopev2's `glintr100.onnx` (512-d), on 112 px `"arcface"` crops; `raw_embeddings` is what PuLID reads.

    Args:
        model_path (`str` or `Path`): `glintr100.onnx`, or a folder holding it (an unpacked `antelopev2.zip`).
        providers (`Sequence[str]`, *optional*): onnxruntime execution providers.

    Raises:
        ModelFileError: as `ArcFaceRecognizer`, with where to get this file.
    """

    name = "antelopev2"
    expected_file = "antelopev2's glintr100.onnx"
    model_help = _HELP

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None):
        path = Path(model_path)
        super().__init__(path / FILENAME if path.is_dir() else path, providers)
