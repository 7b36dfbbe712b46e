"""The ArcFace (insightface w600k_r50) backend, checked on tiny ONNX stand-ins exported from torch.

The real weights are non-commercial and never downloaded. Instead, small torch networks with the same inputs
and outputs are exported, and the backend is compared with torch running on inputs normalised in the test.
"""

import re
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import run_in_threads
from facestudio import load_image
from facestudio.errors import ModelFileError
from facestudio.faces import ARCFACE, FaceAnalyzer, align_face
from facestudio.faces.alignment import invert_affine


def _tiny_arcface(seed: int, out_features: int = 512) -> torch.nn.Module:
    """Conv + PReLU + pooling + linear. Its first conv mixes channels with different weights, so it is
    sensitive to channel order, and the PReLU makes it sensitive to the input's offset and scale."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.PReLU(8),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(256, out_features),
    ).eval()


def _export(net: torch.nn.Module, path, size: int = 112, batch: int | None = None):
    """Export like insightface's file: input `input.1` [N, 3, size, size], output `683` [N, D]."""
    example = torch.zeros(batch or 2, 3, size, size)
    dynamic = None if batch else ({0: torch.export.Dim("batch")},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals, not ours
        torch.onnx.export(net, (example,), str(path), input_names=["input.1"], output_names=["683"],
                          dynamo=True, dynamic_shapes=dynamic, verbose=False)
    return path


def _with_normalising_nodes(src, dst, sub_name: str, mul_name: str):
    """A copy of `src` that takes raw 0-255 input and normalises it itself, like an MXNet export."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    graph.input[0].name = "data"
    graph.initializer.extend([numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                              numpy_helper.from_array(np.array(1 / 127.5, np.float32), "inv_std")])
    nodes = [helper.make_node("Sub", ["data", "mean"], ["centred"], name=sub_name),
             helper.make_node("Mul", ["centred", "inv_std"], ["input.1"], name=mul_name)]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the ArcFace backend needs pip install 'facestudio[arcface]'")
    pytest.importorskip("onnx", reason="these tests edit ONNX graphs: pip install onnx")
    pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs pip install onnxscript")
    root = tmp_path_factory.mktemp("arcface")
    net = _tiny_arcface(0)
    paths = {
        "good": _export(net, root / "w600k_r50.onnx"),
        "fixed_batch": _export(net, root / "fixed_batch2.onnx", batch=2),
        "input_96": _export(_tiny_arcface(1), root / "input96.onnx", size=96),
        "output_128": _export(_tiny_arcface(2, out_features=128), root / "output128.onnx"),
    }
    return net, paths


@pytest.fixture(scope="module")
def recognizer(models):
    from facestudio.faces.arcface import ArcFaceRecognizer

    return ArcFaceRecognizer(models[1]["good"])


def _oracle(net: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    """insightface's convention written independently: RGB, NCHW, (x - 127.5) / 127.5, then L2-normalised."""
    with torch.no_grad():
        x = (torch.from_numpy(crops).permute(0, 3, 1, 2).double() - 127.5) / 127.5
        return torch.nn.functional.normalize(net.double()(x), dim=1).float().numpy()


def _crops(n: int, seed: int = 0) -> np.ndarray:
    """Random RGB crops whose channels differ from one another."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    crops[..., 0] //= 2  # red darker, blue brighter: swapping R and B changes the picture
    crops[..., 2] = 128 + crops[..., 2] // 2
    return crops


# --- alignment: the backend's template and size put landmarks where insightface's norm_crop does ------------


def _random_similarity(rng):
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.2, 6.0)
    return np.array([[scale * np.cos(angle), -scale * np.sin(angle), rng.uniform(-300, 700)],
                     [scale * np.sin(angle), scale * np.cos(angle), rng.uniform(-300, 700)]])


@pytest.mark.parametrize("seed", range(5))
def test_synthetic_landmarks_map_onto_the_arcface_template(seed):
    from facestudio.faces.arcface import ArcFaceRecognizer

    rng = np.random.default_rng(seed)
    to_photo = _random_similarity(rng)  # where the template's face sits in some photo
    landmarks = np.asarray(ARCFACE.points) @ to_photo[:, :2].T + to_photo[:, 2]
    image = np.zeros((64, 64, 3), np.uint8)
    for size, factor in ((ArcFaceRecognizer.input_size, 1), (224, 2)):
        aligned = align_face(image, landmarks, ArcFaceRecognizer.template, size)
        mapped = landmarks @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
        assert np.abs(mapped - np.asarray(ARCFACE.points) * factor).max() < 1e-3
        assert aligned.image.shape == (size, size, 3)
    assert np.allclose(align_face(image, landmarks, "arcface", 112).matrix, invert_affine(to_photo), atol=1e-9)


# --- numbers: the backend equals the torch network on insightface's normalisation ----------------------------


def test_batch_equals_torch_on_insightface_normalisation(models, recognizer):
    net, _ = models
    crops = _crops(4)
    out = recognizer.embed_crops(crops)
    assert out.shape == (4, 512) and out.dtype == np.float32
    assert np.abs(out - _oracle(net, crops)).max() < 1e-5


def test_preprocessing_is_rgb_and_centred_on_127_5(models, recognizer):
    """The check above would catch BGR order or another scale: the network tells them apart by far more."""
    from facestudio.faces.arcface import arcface_blob

    net, _ = models
    crops = _crops(2, seed=1)
    expected = (crops.astype(np.float64).transpose(0, 3, 1, 2) - 127.5) / 127.5
    assert np.abs(arcface_blob(crops) - expected).max() < 1e-6
    out = recognizer.embed_crops(crops)
    assert np.abs(out - _oracle(net, crops[..., ::-1].copy())).max() > 1e-2  # BGR would differ
    with torch.no_grad():
        for mean, std in ((127.5, 128.0), (128.0, 128.0), (0.0, 255.0)):
            x = (torch.from_numpy(crops).permute(0, 3, 1, 2).double() - mean) / std
            other = torch.nn.functional.normalize(net.double()(x), dim=1).float().numpy()
            assert np.abs(out - other).max() > 1e-4, (mean, std)


def test_unit_norm_and_batch_equals_singles(recognizer):
    crops = _crops(3, seed=2)
    batch = recognizer.embed_crops(crops)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    for crop, vector in zip(crops, batch):
        assert np.abs(recognizer.embed_crops(crop[None]) - vector).max() < 1e-5
    assert recognizer.embed_crops(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)


def test_fixed_batch_graph_runs_in_chunks(models):
    from facestudio.faces.arcface import ArcFaceRecognizer

    net, paths = models
    crops = _crops(3, seed=3)  # 3 faces through a graph fixed at batch 2: one full chunk, one padded
    out = ArcFaceRecognizer(paths["fixed_batch"]).embed_crops(crops)
    assert np.abs(out - _oracle(net, crops)).max() < 1e-5


def test_threads_share_one_recognizer(recognizer):
    crops = {k: _crops(2, seed=10 + k) for k in range(4)}
    expected = {k: recognizer.embed_crops(c) for k, c in crops.items()}
    results = run_in_threads(lambda k: recognizer.embed_crops(crops[k]), list(crops), repeats=5)
    for k, outs in results.items():
        assert all(np.array_equal(o, expected[k]) for o in outs)


# --- insightface's MXNet special case ------------------------------------------------------------------------


@pytest.mark.parametrize("sub_name, mul_name, mxnet", [
    ("_minusscalar0", "_mulscalar0", True),  # MXNet's names
    ("Sub_0", "Mul_1", True),
    ("node_Sub_0", "node_Mul_1", False),  # insightface looks at node names, not op types
])
def test_graph_that_normalises_itself_gets_raw_pixels(models, recognizer, tmp_path, sub_name, mul_name, mxnet):
    from facestudio.faces.arcface import ArcFaceRecognizer

    path = _with_normalising_nodes(models[1]["good"], tmp_path / "mxnet.onnx", sub_name, mul_name)
    rec = ArcFaceRecognizer(path)
    assert (rec.input_mean, rec.input_std) == ((0.0, 1.0) if mxnet else (127.5, 127.5))
    crops = _crops(2, seed=4)
    same = np.abs(rec.embed_crops(crops) - recognizer.embed_crops(crops)).max() < 1e-5
    assert same == mxnet  # raw pixels through its own Sub/Mul equal the plain model's output


def test_without_onnx_the_w600k_convention_is_assumed(models, tmp_path, monkeypatch):
    from facestudio.faces.arcface import ArcFaceRecognizer

    path = _with_normalising_nodes(models[1]["good"], tmp_path / "mxnet.onnx", "_minusscalar0", "_mulscalar0")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    rec = ArcFaceRecognizer(path)
    assert (rec.input_mean, rec.input_std) == (127.5, 127.5)


# --- refusing the wrong file, clearly ------------------------------------------------------------------------


@pytest.mark.parametrize("kind, message", [
    ("input_96", r"float\) of shape \[N, 3, 96, 96\], expected one float input of shape \[N, 3, 112, 112\]"),
    ("output_128", r"output of shape \[N, 128\], expected \[N, 512\]"),
])
def test_wrong_shapes_are_refused_naming_the_file(models, kind, message):
    from facestudio.faces.arcface import ArcFaceRecognizer

    path = models[1][kind]
    with pytest.raises(ModelFileError, match=re.escape(str(path)) + ".*" + message):
        ArcFaceRecognizer(path)


def test_missing_file_says_where_to_get_it(tmp_path):
    from facestudio.faces.arcface import ArcFaceRecognizer

    path = tmp_path / "w600k_r50.onnx"
    with pytest.raises(ModelFileError) as info:
        ArcFaceRecognizer(path)
    text = str(info.value)
    assert str(path) in text and "not found" in text
    for needed in ("facestudio download buffalo_l", "buffalo_l", "w600k_r50.onnx", "insightface", "non-commercial"):
        assert needed in text
    with pytest.raises(ModelFileError, match="is a directory"):
        ArcFaceRecognizer(tmp_path)


def test_damaged_files_give_a_clear_error(models, tmp_path):
    pytest.importorskip("onnxruntime")
    from facestudio.faces.arcface import ArcFaceRecognizer

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model\n" * 50)
    good = models[1]["good"].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    for path in (garbage, truncated):
        with pytest.raises(ModelFileError, match=re.escape(str(path)) + ": not a readable ONNX model"):
            ArcFaceRecognizer(path)


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    from facestudio.faces.arcface import ArcFaceRecognizer

    path = tmp_path / "w600k_r50.onnx"
    path.write_bytes(b"placeholder")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ModelFileError, match=re.escape("pip install 'facestudio[arcface]'")):
        ArcFaceRecognizer(path)


def test_bad_crops_are_refused(recognizer):
    for crops in (np.zeros((1, 150, 150, 3), np.uint8), np.zeros((1, 112, 112, 3), np.float32),
                  np.zeros((112, 112, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"\[N, 112, 112, 3\]"):
            recognizer.embed_crops(crops)


# --- end to end ----------------------------------------------------------------------------------------------


def test_face_analyzer_end_to_end(models, analyzer, faces_dir):
    from facestudio.faces.arcface import ArcFaceRecognizer

    net, paths = models
    arcface = FaceAnalyzer(detector=analyzer.detector, recognizer=ArcFaceRecognizer(paths["good"]))
    image = np.asarray(load_image(faces_dir / "obama.jpg"))
    embedding = arcface.embed(image)
    assert embedding.model == "arcface" and embedding.vector.shape == (512,)
    assert abs(np.linalg.norm(embedding.vector) - 1.0) < 1e-5
    face = analyzer.detect(image)[0]
    crop = align_face(image, face.landmark_array(), "arcface", 112).image
    assert np.abs(embedding.vector - _oracle(net, crop[None])[0]).max() < 1e-5
