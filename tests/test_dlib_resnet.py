"""Tests for the PyTorch port of dlib's face recognition ResNet.

The reference is dlib itself: chips are made with dlib's detector, 5-point shape predictor
and ``get_face_chip``, and the descriptors are compared to
``dlib.face_recognition_model_v1.compute_face_descriptor``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FACES_DIR, PHOTOS
from facestudio.errors import ModelFileError
from facestudio.faces.dlib_resnet import DAT_FILENAME, DlibFaceResNet, read_dlib_resnet_dat
from facestudio.faces.model_files import dlib_model_file


# Counted from dnn_face_recognition_ex.cpp by hand, independently of the module's layer list.
EXPECTED_NUM_PARAMETERS = 5_614_592


@pytest.fixture(scope="module")
def dat_path() -> Path:
    return dlib_model_file(DAT_FILENAME)


@pytest.fixture(scope="module")
def dat_bytes(dat_path) -> bytes:
    return dat_path.read_bytes()


@pytest.fixture(scope="module")
def net(dat_path) -> DlibFaceResNet:
    start = time.perf_counter()
    model = DlibFaceResNet.from_dat(dat_path)
    print(f"\nDlibFaceResNet.from_dat: {time.perf_counter() - start:.3f} s")
    return model


@pytest.fixture(scope="module")
def chips(dat_path) -> list[tuple[str, np.ndarray]]:
    """One dlib-aligned 150x150 RGB chip per detected face, with the photo's name."""
    import dlib
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dat_path.parent / "shape_predictor_5_face_landmarks.dat"))
    out = []
    for name in PHOTOS:
        # load_rgb_image drops the alpha channel of the RGBA PNG.
        img = dlib.load_rgb_image(str(FACES_DIR / name))
        for rect in detector(img, 1):
            out.append((name, dlib.get_face_chip(img, predictor(img, rect), size=150, padding=0.25)))
    assert {name for name, _ in out} == set(PHOTOS), "a test photo had no detected face"
    return out


@pytest.fixture(scope="module")
def chip_batch(chips) -> torch.Tensor:
    return torch.from_numpy(np.stack([c for _, c in chips])).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def dlib_descriptors(dat_path, chips) -> np.ndarray:
    import dlib
    model = dlib.face_recognition_model_v1(str(dat_path))
    return np.stack([np.array(model.compute_face_descriptor(c)) for _, c in chips])


def test_matches_dlib(net, chip_batch, dlib_descriptors):
    with torch.no_grad():
        ours = net(chip_batch).double().numpy()
    assert ours.shape == (len(chip_batch), 128)
    max_diff = np.abs(ours - dlib_descriptors).max()
    print(f"\nmax |torch - dlib| over {len(chip_batch)} chips: {max_diff:.3e}")
    assert max_diff <= 1e-4


def test_descriptors_separate_identities(net, chips, chip_batch):
    # dlib's documented threshold: same person below 0.6 Euclidean distance.
    with torch.no_grad():
        desc = net(chip_batch)
    names = [name for name, _ in chips]
    biden = names.index("biden.jpg")
    for i, name in enumerate(names):
        for j in range(i + 1, len(names)):
            dist = (desc[i] - desc[j]).norm().item()
            assert (dist > 0.6) == (biden in (i, j)), (name, names[j], dist)


def test_batch_equals_single(net, chip_batch):
    with torch.no_grad():
        batch = net(chip_batch)
        singles = torch.cat([net(chip_batch[i : i + 1]) for i in range(len(chip_batch))])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)


def test_gradients_reach_input(net, chip_batch):
    x = chip_batch[:2].clone().requires_grad_()
    net(x).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # Weights stay trainable: the later identity-loss stage may fine-tune them.
    assert net.fc.weight.grad is not None
    net.zero_grad(set_to_none=True)


def test_model_layout(net):
    assert not net.training
    assert net.input_size == 150
    assert sum(p.numel() for p in net.parameters()) == EXPECTED_NUM_PARAMETERS
    assert len(net.blocks) == 14
    # input_rgb_image_sized's means are part of the model, read from the file.
    np.testing.assert_allclose(net.avg_rgb.flatten().numpy(), [122.782, 117.001, 104.298], atol=1e-3)
    assert "avg_rgb" in dict(net.named_buffers())


def test_weights_dataclass(dat_path):
    w = read_dlib_resnet_dat(dat_path)
    assert w.stem_conv.weight.shape == (32, 3, 7, 7)
    assert w.fc.shape == (256, 128)
    assert [b.downsample for b in w.blocks].count(True) == 4
    assert w.layer_versions[0] == "input_rgb_image_sized"


def test_rejects_wrong_input_shape(net):
    with pytest.raises(ValueError, match=r"\[B, 3, 150, 150\]"):
        net(torch.zeros(1, 3, 112, 112))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.dat"
    with pytest.raises(ModelFileError, match="nope.dat"):
        DlibFaceResNet.from_dat(missing)


@pytest.mark.parametrize("keep", [0, 3, 50, 0.5, -1])
def test_truncated_file(tmp_path, dat_bytes, keep):
    keep = int(len(dat_bytes) * keep) if isinstance(keep, float) else keep % len(dat_bytes)
    path = tmp_path / "truncated.dat"
    path.write_bytes(dat_bytes[:keep])
    with pytest.raises(ModelFileError, match=r"truncated\.dat.*byte offset \d+"):
        read_dlib_resnet_dat(path)


def test_trailing_bytes(tmp_path, dat_bytes):
    path = tmp_path / "trailing.dat"
    path.write_bytes(dat_bytes + b"\x01\x00")
    message = rf"trailing\.dat.*2 trailing bytes after the network at byte offset {len(dat_bytes)}"
    with pytest.raises(ModelFileError, match=message):
        read_dlib_resnet_dat(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.dat"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError, match=r"garbage\.dat"):
        DlibFaceResNet.from_dat(path)


def test_other_dlib_model_rejected(dat_path):
    # A real dlib file of another kind: the shape predictor.
    with pytest.raises(ModelFileError, match=r"shape_predictor_5_face_landmarks\.dat"):
        read_dlib_resnet_dat(dat_path.parent / "shape_predictor_5_face_landmarks.dat")


def test_unexpected_layer(tmp_path, dat_bytes):
    # Rename the first relu_ so the stream holds a layer that is not in the network.
    offset = dat_bytes.index(b"\x01\x05relu_")
    path = tmp_path / "renamed.dat"
    path.write_bytes(dat_bytes[:offset] + b"\x01\x05relx_" + dat_bytes[offset + 7 :])
    with pytest.raises(ModelFileError, match=rf"renamed\.dat.*'relx_' at byte offset {offset}"):
        read_dlib_resnet_dat(path)


def test_shape_mismatch(tmp_path, dat_bytes):
    # Change the stem's num_filters (32, serialized as 0x01 0x20 right after its params).
    offset = dat_bytes.index(b"\x05con_4")
    n_floats = 3 * 7 * 7 * 32 + 32
    # tensor version 2, then dims (n_floats, 1, 1, 1) as packed ints (serialize.h)
    header = b"\x01\x02" + b"\x02" + n_floats.to_bytes(2, "little") + b"\x01\x01" * 3
    assert dat_bytes[offset + 6 : offset + 6 + len(header)] == header, "unexpected con_ params layout"
    filters_at = offset + 6 + len(header) + 4 * n_floats
    assert dat_bytes[filters_at : filters_at + 2] == b"\x01\x20"
    path = tmp_path / "shape.dat"
    path.write_bytes(dat_bytes[:filters_at] + b"\x01\x40" + dat_bytes[filters_at + 2 :])
    with pytest.raises(ModelFileError, match=rf"shape\.dat.*num_filters.*at byte offset {filters_at}"):
        read_dlib_resnet_dat(path)
