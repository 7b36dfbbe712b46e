# Copyright 2025 The facestudio authors.
# SPDX-License-Identifier: Apache-2.0
"""PyTorch port of dlib's 128-d face recognition ResNet.

The network is ``anet_type`` from dlib's ``examples/dnn_face_recognition_ex.cpp``, the
model shipped as ``dlib_face_recognition_resnet_model_v1.dat``. The weights are parsed
from dlib's own binary serialization, so dlib is not needed to load or run the model.

Layer list, from the input up (``dnn_face_recognition_ex.cpp``)::

    input_rgb_image_sized<150>
    con<32,7,7,2,2> affine relu max_pool<3,3,2,2>
    alevel4 = 3 x ares<32>
    alevel3 = ares_down<64>,  3 x ares<64>
    alevel2 = ares_down<128>, 2 x ares<128>
    alevel1 = ares_down<256>, 2 x ares<256>
    alevel0 = ares_down<256>
    avg_pool_everything fc_no_bias<128> loss_metric

with ``ares<N> = relu<add_prev1<block<N,1,tag1<x>>>>``,
``ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<x>>>>>>>>`` and
``block<N,stride> = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,x>>>>>>``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from .model_files import dlib_model_file

__all__ = [
    "AffineWeights",
    "ConvWeights",
    "DlibFaceResNet",
    "DlibResNetWeights",
    "ResBlockWeights",
    "read_dlib_resnet_dat",
]

DAT_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"

# (num_filters, number of plain residual blocks after the down-sampling one, or None
# for alevel4 which has no down-sampling block), listed from the input up.
_LEVELS = ((32, None, 3), (64, 1, 3), (128, 1, 2), (256, 1, 2), (256, 1, 0))
_DESCRIPTOR_DIM = 128
_INPUT_SIZE = 150

# Exponents that dlib's float_details uses to encode non-finite values (float_details.h).
_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


# ----------------------------------------------------------------------------------------
# Parsed weights


@dataclass(frozen=True, eq=False)
class ConvWeights:
    """One dlib ``con_`` layer.

    Args:
        weight (`np.ndarray`): float32 filters ``[out, in, k, k]`` (dlib's layout is the same).
        bias (`np.ndarray` or `None`): float32 ``[out]``; `None` when the file disabled the bias.
        stride (`int`): stride in both directions.
        padding (`int`): zero padding in both directions.
        fused_relu (`bool`): ``con_6`` may fuse a relu into the convolution.
    """

    weight: np.ndarray
    bias: np.ndarray | None
    stride: int
    padding: int
    fused_relu: bool = False


@dataclass(frozen=True, eq=False)
class AffineWeights:
    """One dlib ``affine_`` layer in ``CONV_MODE``: ``y = gamma[c] * x + beta[c]``.

    Args:
        gamma (`np.ndarray`): float32 ``[C]``.
        beta (`np.ndarray`): float32 ``[C]``.
    """

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True, eq=False)
class ResBlockWeights:
    """One ``ares``/``ares_down`` block.

    Args:
        conv1 (`ConvWeights`): the 3x3 convolution with the block's stride.
        affine1 (`AffineWeights` or `None`): `None` if the file disabled it (``affine_2``).
        relu1 (`bool`): whether the relu between the two convolutions is enabled.
        conv2 (`ConvWeights`): the 3x3 stride 1 convolution.
        affine2 (`AffineWeights` or `None`): as ``affine1``.
        relu_out (`bool`): whether the relu after the residual addition is enabled.
        downsample (`bool`): ``ares_down``: stride 2 and a 2x2 average-pooled shortcut.
    """

    conv1: ConvWeights
    affine1: AffineWeights | None
    relu1: bool
    conv2: ConvWeights
    affine2: AffineWeights | None
    relu_out: bool
    downsample: bool


@dataclass(frozen=True, eq=False)
class DlibResNetWeights:
    """Everything read from ``dlib_face_recognition_resnet_model_v1.dat``.

    Args:
        path (`str`): the file that was read.
        avg_rgb (`tuple[float, float, float]`): per-channel means of ``input_rgb_image_sized``.
        stem_conv (`ConvWeights`): the 7x7 stride 2 convolution.
        stem_affine (`AffineWeights` or `None`): affine after it.
        stem_relu (`bool`): whether the stem relu is enabled.
        blocks (`tuple[ResBlockWeights, ...]`): the 14 residual blocks, from the input up.
        fc (`np.ndarray`): float32 ``[num_inputs, 128]``; dlib computes ``x @ fc``.
        loss_margin (`float`): ``loss_metric_`` margin (not used for inference).
        loss_distance_threshold (`float`): ``loss_metric_`` distance threshold.
        layer_versions (`tuple[str, ...]`): version strings of the layer details, from the input up.
    """

    path: str
    avg_rgb: tuple[float, float, float]
    stem_conv: ConvWeights
    stem_affine: AffineWeights | None
    stem_relu: bool
    blocks: tuple[ResBlockWeights, ...]
    fc: np.ndarray
    loss_margin: float
    loss_distance_threshold: float
    layer_versions: tuple[str, ...]


# ----------------------------------------------------------------------------------------
# dlib's serialization primitives


class _Reader:
    """Cursor over the bytes of a dlib serialized object; every error names file and offset."""

    def __init__(self, data: bytes, path: str):
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, what: str, offset: int | None = None) -> ModelFileError:
        offset = self.pos if offset is None else offset
        return ModelFileError(
            f"{self.path}: not a dlib_face_recognition_resnet_model_v1 file: {what} at byte offset {offset}"
        )

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends while reading {what} ({n} bytes needed, {len(self.data) - self.pos} left)")
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def integer(self, what: str, max_bytes: int = 8, signed: bool = True) -> int:
        # serialize.h pack_int/unpack_int: control byte (low 4 bits = byte count, 0x80 =
        # negative for signed types) then that many little-endian bytes.
        start = self.pos
        ctrl = self.take(1, what)[0]
        # Unsigned types only mask out 3 reserved bits, so a sign bit makes them fail.
        size = ctrl & (0x0F if signed else 0x8F)
        if size == 0 or size > max_bytes:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} for {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if signed and ctrl & 0x80 else value

    def unsigned(self, what: str, max_bytes: int = 8) -> int:
        return self.integer(what, max_bytes, signed=False)

    def boolean(self, what: str) -> bool:
        # serialize.h: a bool is the ASCII character '1' or '0'.
        start = self.pos
        ch = bytes(self.take(1, what))
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool {ch!r} for {what}", start)
        return ch == b"1"

    def string(self, what: str) -> str:
        # serialize.h: std::string is an unsigned length then the raw bytes.
        n = self.unsigned(f"length of {what}")
        return bytes(self.take(n, what)).decode("latin-1")

    def real(self, what: str) -> float:
        # serialize.h deserialize_floating_point: float_details is an int64 mantissa then an
        # int16 exponent, value = mantissa * 2**exponent. A first byte with any of the bits
        # 0x70 set marks dlib's older ASCII float format, which this reader does not handle.
        start = self.pos
        if start < len(self.data) and self.data[start] & 0x70:
            raise self.fail(f"old ASCII float format for {what} (not supported)")
        mantissa = self.integer(f"mantissa of {what}", 8)
        exponent = self.integer(f"exponent of {what}", 2)
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise self.fail(f"float out of range for {what}", start) from None

    def version(self, what: str, allowed: range) -> int:
        start = self.pos
        v = self.integer(f"version of {what}", 4)
        if v not in allowed:
            raise self.fail(f"unexpected {what} version {v}", start)
        return v

    def dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        dims = tuple(self.integer(f"{what} dimension", 8) for _ in range(4))
        if min(dims) < 0:
            raise self.fail(f"negative dimensions {dims} for {what}", start)
        return dims

    def tensor(self, what: str) -> np.ndarray:
        """A ``resizable_tensor`` (cuda/tensor.h): version 2, dims, raw little-endian float32."""
        self.version(f"{what} tensor", range(2, 3))
        dims = self.dims(what)
        count = math.prod(dims)
        raw = self.take(4 * count, f"{count} floats of {what}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def skip_tensor(self, what: str) -> None:
        # Training-time state (x_grad, cached_output, ...) is not needed; avoid copying it.
        self.version(f"{what} tensor", range(2, 3))
        count = math.prod(self.dims(what))
        self.take(4 * count, f"{count} floats of {what}")

    def alias(self, what: str) -> tuple[int, int, int, int]:
        """An ``alias_tensor`` (cuda/tensor.h): version 1 and dims only, no data."""
        self.version(f"{what} alias_tensor", range(1, 2))
        return self.dims(what)


# ----------------------------------------------------------------------------------------
# The expected layer list


@dataclass(frozen=True)
class _Spec:
    """One layer of the network as dlib nests it; ``kind`` picks the parser."""

    kind: str
    out_channels: int = 0
    in_channels: int = 0
    size: int = 0
    stride: int = 1


def _block_specs(cin: int, n: int, downsample: bool) -> list[_Spec]:
    """``ares``/``ares_down`` layers from the input up (dnn_face_recognition_ex.cpp)."""
    stride = 2 if downsample else 1
    specs = [
        _Spec("tag"),  # tag1
        _Spec("con", n, cin, 3, stride),
        _Spec("affine", n),
        _Spec("relu"),
        _Spec("con", n, n, 3, 1),
        _Spec("affine", n),
    ]
    if downsample:
        specs += [_Spec("tag"), _Spec("skip"), _Spec("avg_pool", size=2, stride=2)]  # tag2, skip1
    return specs + [_Spec("add_prev"), _Spec("relu")]


def _network_specs() -> list[_Spec]:
    """All layers from the input (first) to the loss (last)."""
    specs = [
        _Spec("input"),
        _Spec("con", 32, 3, 7, 2),
        _Spec("affine", 32),
        _Spec("relu"),
        _Spec("max_pool", size=3, stride=2),
    ]
    channels = 32
    for n, num_down, num_plain in _LEVELS:
        for _ in range(num_down or 0):
            specs += _block_specs(channels, n, downsample=True)
            channels = n
        for _ in range(num_plain):
            specs += _block_specs(channels, n, downsample=False)
            channels = n
    specs += [_Spec("avg_pool_everything"), _Spec("fc", _DESCRIPTOR_DIM, channels), _Spec("loss")]
    return specs


# ----------------------------------------------------------------------------------------
# Layer detail parsers (dnn/layers.h, dnn/input.h, dnn/loss.h)


def _read_input(r: _Reader) -> tuple[float, float, float]:
    # input.h input_rgb_image_sized: "input_rgb_image_sized", avg_red/green/blue, nr, nc.
    start = r.pos
    name = r.string("input layer version")
    if name != "input_rgb_image_sized":
        raise r.fail(f"unexpected input layer {name!r}", start)
    avg = (r.real("avg_red"), r.real("avg_green"), r.real("avg_blue"))
    start = r.pos
    nr, nc = r.unsigned("input nr"), r.unsigned("input nc")
    if (nr, nc) != (_INPUT_SIZE, _INPUT_SIZE):
        raise r.fail(f"input size {nr}x{nc}, expected {_INPUT_SIZE}x{_INPUT_SIZE}", start)
    return avg


def _read_con(r: _Reader, spec: _Spec) -> tuple[str, ConvWeights]:
    # layers.h con_: "con_4|5|6", params, num_filters, nr, nc, stride_y, stride_x,
    # padding_y, padding_x, filters alias, biases alias, 4 lr/wd multipliers,
    # con_5+: use_bias, con_6: use_relu.
    start = r.pos
    version = r.string("con_ version")
    if version not in ("con_4", "con_5", "con_6"):
        raise r.fail(f"expected a con_ layer, found {version!r}", start)
    params = r.tensor("con_ params").reshape(-1)
    geometry_at = r.pos
    geometry = (
        r.integer("num_filters"),
        r.integer("nr"),
        r.integer("nc"),
        r.integer("stride_y", 4),
        r.integer("stride_x", 4),
        r.integer("padding_y", 4),
        r.integer("padding_x", 4),
    )
    # dlib pads by size//2 only when the stride is 1 (layers.h con_ template defaults).
    pad = spec.size // 2 if spec.stride == 1 else 0
    expected = (spec.out_channels, spec.size, spec.size, spec.stride, spec.stride, pad, pad)
    if geometry != expected:
        raise r.fail(
            f"con_ (num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x) = {geometry}, expected {expected}",
            geometry_at,
        )
    alias_at = r.pos
    filters, biases = r.alias("filters"), r.alias("biases")
    for name in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_lr_multiplier", "bias_wd_multiplier"):
        r.real(name)
    use_bias = r.boolean("use_bias") if version in ("con_5", "con_6") else True
    use_relu = r.boolean("use_relu") if version == "con_6" else False

    want_filters = (spec.out_channels, spec.in_channels, spec.size, spec.size)
    want_biases = (1, spec.out_channels, 1, 1) if use_bias else None
    n_filters = math.prod(want_filters)
    n_params = n_filters + (spec.out_channels if use_bias else 0)
    if filters != want_filters or (use_bias and biases != want_biases) or params.size != n_params:
        raise r.fail(
            f"con_ shapes: params {params.size} floats, filters {filters}, biases {biases}; "
            f"expected {n_params} floats, filters {want_filters}, biases {want_biases}",
            alias_at,
        )
    # The aliases view the params at consecutive offsets: filters first, then biases.
    weight = params[:n_filters].reshape(want_filters)
    bias = params[n_filters:] if use_bias else None
    # con_ only applies use_relu on its biased code path (layers.h con_::forward).
    return version, ConvWeights(weight, bias, spec.stride, pad, fused_relu=use_bias and use_relu)


def _affine_from_bn(r: _Reader, channels: int, start: int) -> AffineWeights:
    # layers.h bn_ "bn_con2": params, gamma, beta aliases, means, invstds, running_means,
    # running_variances, num_updates, running_stats_window_size, 4 multipliers, eps.
    # affine_(const bn_&) folds it into gamma/sqrt(var+eps) and beta - gamma'*mean.
    params = r.tensor("bn_ params").reshape(-1)
    gamma_dims, beta_dims = r.alias("gamma"), r.alias("beta")
    r.skip_tensor("means")
    r.skip_tensor("invstds")
    running_means = r.tensor("running_means").reshape(-1)
    running_variances = r.tensor("running_variances").reshape(-1)
    r.unsigned("num_updates")
    r.unsigned("running_stats_window_size")
    for name in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_lr_multiplier", "bias_wd_multiplier"):
        r.real(name)
    eps = r.real("eps")
    want = (1, channels, 1, 1)
    if (
        gamma_dims != want
        or beta_dims != want
        or params.size != 2 * channels
        or running_means.size != channels
        or running_variances.size != channels
    ):
        raise r.fail(f"bn_con2 shapes do not match {channels} channels", start)
    gamma = params[:channels].astype(np.float64) / np.sqrt(running_variances.astype(np.float64) + eps)
    beta = params[channels:] - gamma * running_means
    return AffineWeights(gamma.astype(np.float32), beta.astype(np.float32))


def _read_affine(r: _Reader, spec: _Spec) -> tuple[str, AffineWeights | None]:
    # layers.h affine_: "affine_"/"affine_2": params, gamma alias, beta alias, int mode,
    # affine_2: bool disabled. A "bn_con2" in the stream is converted to an affine_.
    start = r.pos
    version = r.string("affine_ version")
    channels = spec.out_channels
    if version == "bn_con2":
        return version, _affine_from_bn(r, channels, start)
    if version not in ("affine_", "affine_2"):
        raise r.fail(f"expected an affine_ layer, found {version!r}", start)
    params = r.tensor("affine_ params").reshape(-1)
    alias_at = r.pos
    gamma_dims, beta_dims = r.alias("gamma"), r.alias("beta")
    mode_at = r.pos
    mode = r.integer("affine_ mode", 4)
    disabled = r.boolean("disabled") if version == "affine_2" else False
    if mode != 0:  # CONV_MODE: one gamma/beta per channel (layers.h layer_mode).
        raise r.fail(f"affine_ mode {mode}, expected 0 (CONV_MODE)", mode_at)
    if disabled:
        return version, None
    want = (1, channels, 1, 1)
    if gamma_dims != want or beta_dims != want or params.size != 2 * channels:
        raise r.fail(
            f"affine_ shapes: params {params.size} floats, gamma {gamma_dims}, beta {beta_dims}; "
            f"expected gamma/beta {want}",
            alias_at,
        )
    return version, AffineWeights(params[:channels].copy(), params[channels:].copy())


def _read_relu(r: _Reader) -> tuple[str, bool]:
    # layers.h relu_: "relu_" or "relu_2" + bool disabled. Returns whether it is enabled.
    start = r.pos
    version = r.string("relu_ version")
    if version == "relu_":
        return version, True
    if version != "relu_2":
        raise r.fail(f"expected a relu_ layer, found {version!r}", start)
    return version, not r.boolean("relu disabled")


def _read_pool(r: _Reader, spec: _Spec) -> tuple[str, None]:
    # layers.h max_pool_/avg_pool_: "max_pool_2"/"avg_pool_2", nr, nc, stride_y, stride_x,
    # padding_y, padding_x. avg_pool_everything is avg_pool_<0,0,1,1>.
    start = r.pos
    version = r.string("pool version")
    want_version = "max_pool_2" if spec.kind == "max_pool" else "avg_pool_2"
    if version != want_version:
        raise r.fail(f"expected {want_version}, found {version!r}", start)
    geometry_at = r.pos
    geometry = (
        r.integer("nr"),
        r.integer("nc"),
        r.integer("stride_y", 4),
        r.integer("stride_x", 4),
        r.integer("padding_y", 4),
        r.integer("padding_x", 4),
    )
    pad = spec.size // 2 if spec.stride == 1 else 0
    expected = (spec.size, spec.size, spec.stride, spec.stride, pad, pad)
    if geometry != expected:
        raise r.fail(
            f"{version} (nr, nc, stride_y, stride_x, padding_y, padding_x) = {geometry}, expected {expected}",
            geometry_at,
        )
    return version, None


def _read_add_prev(r: _Reader) -> tuple[str, None]:
    # layers.h add_prev_: just the version string.
    start = r.pos
    version = r.string("add_prev_ version")
    if version != "add_prev_":
        raise r.fail(f"expected add_prev_, found {version!r}", start)
    return version, None


def _read_fc(r: _Reader, spec: _Spec) -> tuple[str, np.ndarray]:
    # layers.h fc_: "fc_2|fc_3", num_outputs, num_inputs, params, weights alias, biases
    # alias, int bias_mode, 4 multipliers, fc_3: bool use_bias.
    start = r.pos
    version = r.string("fc_ version")
    if version not in ("fc_2", "fc_3"):
        raise r.fail(f"expected an fc_ layer, found {version!r}", start)
    sizes_at = r.pos
    num_outputs, num_inputs = r.unsigned("num_outputs"), r.unsigned("num_inputs")
    if (num_outputs, num_inputs) != (spec.out_channels, spec.in_channels):
        raise r.fail(
            f"fc_ has {num_inputs} inputs and {num_outputs} outputs, "
            f"expected {spec.in_channels} and {spec.out_channels}",
            sizes_at,
        )
    params = r.tensor("fc_ params").reshape(-1)
    alias_at = r.pos
    weights = r.alias("weights")
    r.alias("biases")
    mode_at = r.pos
    if r.integer("bias_mode", 4) != 1:  # fc_no_bias is fc_<128, FC_NO_BIAS=1>.
        raise r.fail("fc_ bias_mode is not FC_NO_BIAS", mode_at)
    for name in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_lr_multiplier", "bias_wd_multiplier"):
        r.real(name)
    if version == "fc_3":
        r.boolean("use_bias")  # irrelevant with FC_NO_BIAS
    want = (num_inputs, num_outputs, 1, 1)
    if weights != want or params.size != num_inputs * num_outputs:
        raise r.fail(f"fc_ weights {weights} with {params.size} params, expected {want}", alias_at)
    # weights is a (num_inputs x num_outputs) matrix and dlib computes output = x * W.
    return version, params.reshape(num_inputs, num_outputs).copy()


def _read_loss(r: _Reader) -> tuple[str, float, float]:
    # loss.h loss_metric_: "loss_metric_" (margin 0.1 and threshold 0.75 hard-coded) or
    # "loss_metric_2" + margin + dist_thresh.
    start = r.pos
    version = r.string("loss version")
    if version == "loss_metric_":
        return version, 0.1, 0.75
    if version != "loss_metric_2":
        raise r.fail(f"expected loss_metric_, found {version!r}", start)
    return version, r.real("margin"), r.real("dist_thresh")


_DETAIL_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": lambda r, spec: _read_relu(r),
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "avg_pool_everything": lambda r, spec: _read_pool(r, _Spec("avg_pool", size=0, stride=1)),
    "add_prev": lambda r, spec: _read_add_prev(r),
    "fc": _read_fc,
}


def _read_layer_tail(r: _Reader, version: int, over_input: bool) -> None:
    """What follows the details of an add_layer: training-time state, skipped."""
    # core.h add_layer: this_layer_setup_called, gradient_input_is_stale,
    # get_output_and_gradient_input_disabled, x_grad, cached_output, then params_grad
    # (version 2), or for the layer over the input: grad_final and, in version 3, the
    # _sample_expansion_factor.
    r.boolean("this_layer_setup_called")
    r.boolean("gradient_input_is_stale")
    r.boolean("get_output_and_gradient_input_disabled")
    r.skip_tensor("x_grad")
    r.skip_tensor("cached_output")
    if over_input:
        r.skip_tensor("grad_final")
        if version >= 3:
            r.unsigned("_sample_expansion_factor")
    elif version == 2:
        r.skip_tensor("params_grad")


def _parse(r: _Reader) -> DlibResNetWeights:
    specs = _network_specs()
    # The loss and every add_layer/tag/skip write their version and then their subnetwork
    # (core.h), so the stream starts with the versions from the loss down to the input.
    r.version("add_loss_layer", range(1, 2))
    loss_version, margin, dist_thresh = _read_loss(r)  # add_loss_layer writes its details first
    add_layer_versions: dict[int, int] = {}
    for i in range(len(specs) - 2, 0, -1):
        kind = specs[i].kind
        if kind in ("tag", "skip"):
            r.version(f"add_{kind}_layer", range(1, 2))  # nothing follows their subnetwork
        elif i == 1:
            add_layer_versions[i] = r.version("add_layer over the input layer", range(2, 4))
        else:
            add_layer_versions[i] = r.version(f"add_layer of {kind}", range(1, 3))

    # Then the details, from the input layer up, each followed by the add_layer tail.
    avg_rgb = _read_input(r)
    values: list = []
    versions: list[str] = ["input_rgb_image_sized"]
    for i, spec in enumerate(specs[1:-1], start=1):
        if spec.kind in ("tag", "skip"):
            continue
        version, value = _DETAIL_READERS[spec.kind](r, spec)
        versions.append(version)
        if spec.kind in ("con", "affine", "relu", "fc"):
            values.append(value)
        _read_layer_tail(r, add_layer_versions[i], over_input=(i == 1))
    versions.append(loss_version)

    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes after the network")
    return _assemble(r.path, avg_rgb, values, margin, dist_thresh, tuple(versions))


def _assemble(path, avg_rgb, values, margin, dist_thresh, versions) -> DlibResNetWeights:
    """Group the con/affine/relu/fc values (input first) into blocks, following ``_LEVELS``."""
    it = iter(values)
    stem = (next(it), next(it), next(it))
    blocks = []
    for _, num_down, num_plain in _LEVELS:
        for downsample in [True] * (num_down or 0) + [False] * num_plain:
            conv1, affine1, relu1, conv2, affine2, relu_out = (next(it) for _ in range(6))
            blocks.append(ResBlockWeights(conv1, affine1, relu1, conv2, affine2, relu_out, downsample))
    fc = next(it)
    return DlibResNetWeights(
        path=path,
        avg_rgb=avg_rgb,
        stem_conv=stem[0],
        stem_affine=stem[1],
        stem_relu=stem[2],
        blocks=tuple(blocks),
        fc=fc,
        loss_margin=margin,
        loss_distance_threshold=dist_thresh,
        layer_versions=versions,
    )


def read_dlib_resnet_dat(path: str | os.PathLike) -> DlibResNetWeights:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` without dlib.

    The whole file is checked against the expected layer list: versions, layer types,
    geometry and tensor shapes, and that no bytes are left over.

    Args:
        path (`str` or `os.PathLike`): the ``.dat`` file, as written by ``dlib::serialize``.

    Returns:
        `DlibResNetWeights`: the parameters as float32 numpy arrays.

    Raises:
        ModelFileError: if ``path`` does not exist or is not this network; the message names the file, what was
            unexpected and the byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    return _parse(_Reader(path.read_bytes(), str(path)))


# ----------------------------------------------------------------------------------------
# PyTorch modules


class _Affine(nn.Module):
    """dlib ``affine_`` in CONV_MODE: per-channel ``gamma * x + beta``."""

    def __init__(self, weights: AffineWeights):
        super().__init__()
        self.gamma = nn.Parameter(torch.from_numpy(weights.gamma.copy()))
        self.beta = nn.Parameter(torch.from_numpy(weights.beta.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


def _conv(weights: ConvWeights) -> nn.Conv2d:
    out_ch, in_ch, k, _ = weights.weight.shape
    conv = nn.Conv2d(in_ch, out_ch, k, stride=weights.stride, padding=weights.padding, bias=weights.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weights.weight))
        if weights.bias is not None:
            conv.bias.copy_(torch.from_numpy(weights.bias))
    return conv


def _affine(weights: AffineWeights | None) -> nn.Module:
    return nn.Identity() if weights is None else _Affine(weights)


def _relu(enabled: bool) -> nn.Module:
    return nn.ReLU() if enabled else nn.Identity()


def _conv_relu(weights: ConvWeights) -> nn.Module:
    conv = _conv(weights)
    return nn.Sequential(conv, nn.ReLU()) if weights.fused_relu else conv


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: sum of two tensors whose shapes may differ.

    The result has the larger size in every dimension; the smaller tensor is zero-padded
    at the high end of each dimension, index-aligned (cuda/cpu_dlib.cpp ``add(dest, src1,
    src2)``). This covers both the channel growth and the 3x3 vs 4x4 / 1x1 vs 2x2 spatial
    mismatch of the down-sampling blocks.

    Args:
        a (`torch.Tensor`): ``[B, C1, H1, W1]``.
        b (`torch.Tensor`): ``[B, C2, H2, W2]``.

    Returns:
        `torch.Tensor`: ``[B, max(C), max(H), max(W)]``.
    """
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _ResBlock(nn.Module):
    """``ares``/``ares_down``: ``relu(block(x) + shortcut(x))`` with dlib's add_prev."""

    def __init__(self, weights: ResBlockWeights):
        super().__init__()
        self.downsample = weights.downsample
        self.body = nn.Sequential(
            _conv_relu(weights.conv1),
            _affine(weights.affine1),
            _relu(weights.relu1),
            _conv_relu(weights.conv2),
            _affine(weights.affine2),
        )
        self.out_relu = _relu(weights.relu_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return self.out_relu(_add_prev(self.body(x), shortcut))


class DlibFaceResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1 in PyTorch.

    Gives the same 128-d descriptor as ``dlib.face_recognition_model_v1.compute_face_descriptor``
    on a 150x150 aligned chip (as made by ``dlib.get_face_chip``) and is differentiable, so
    it can serve as an identity loss. Build it with `DlibFaceResNet.from_dat`.

    Args:
        weights (`DlibResNetWeights`): parsed weights, see `read_dlib_resnet_dat`.
    """

    input_size = _INPUT_SIZE

    def __init__(self, weights: DlibResNetWeights):
        super().__init__()
        # input_rgb_image_sized subtracts these per-channel means and divides by 256.
        self.register_buffer("avg_rgb", torch.tensor(weights.avg_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = nn.Sequential(
            _conv_relu(weights.stem_conv),
            _affine(weights.stem_affine),
            _relu(weights.stem_relu),
            nn.MaxPool2d(3, 2),
        )
        self.blocks = nn.Sequential(*(_ResBlock(b) for b in weights.blocks))
        num_inputs, num_outputs = weights.fc.shape
        self.fc = nn.Linear(num_inputs, num_outputs, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(weights.fc.T.copy()))

    @classmethod
    def from_dat(cls, path: str | os.PathLike | None = None) -> DlibFaceResNet:
        """Load dlib's ``.dat`` file, in eval mode.

        Args:
            path (`str` or `os.PathLike`, *optional*): the ``.dat`` file; defaults to
                the copy in the ``face-recognition-models`` package.

        Returns:
            `DlibFaceResNet`: the model on CPU, float32, eval mode.

        Raises:
            ModelFileError: if the file does not exist or is not this network.
        """
        weights = read_dlib_resnet_dat(dlib_model_file(DAT_FILENAME) if path is None else path)
        return cls(weights).eval()

    #: Residual blocks up to the end of alevel2: their output (128 channels, 8x8 for a 150 px chip) is the
    #: spatial "detail" map that identity guidance uses beside the descriptor (FlashFace's face feature maps).
    FEATURE_BLOCKS = 10

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """Compute dlib face descriptors.

        Args:
            chips (`torch.Tensor`): ``[B, 3, 150, 150]`` RGB face chips with pixel values in
                0..255 (not normalised), aligned like ``dlib.get_face_chip(..., size=150,
                padding=0.25)``.

        Returns:
            `torch.Tensor`: ``[B, 128]`` raw descriptors (not L2-normalised), as dlib returns them.
        """
        return self.forward_with_features(chips)[0]

    def forward_with_features(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors and the intermediate detail map, in one pass.

        Args:
            chips (`torch.Tensor`): as for `forward`.

        Returns:
            ``([B, 128]`` raw descriptors, ``[B, 128, 8, 8]`` feature map after the 128-channel level).
        """
        if chips.ndim != 4 or chips.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(
                f"expected chips of shape [B, 3, {self.input_size}, {self.input_size}], got {list(chips.shape)}"
            )
        x = (chips.to(self.avg_rgb.dtype) - self.avg_rgb) / 256.0
        features = self.blocks[: self.FEATURE_BLOCKS](self.stem(x))
        x = self.blocks[self.FEATURE_BLOCKS :](features)
        # avg_pool_everything: mean over all spatial positions.
        return self.fc(x.mean(dim=(2, 3))), features
