"""Face parsing (BiSeNet) and the face image PuLID shows EVA-CLIP: grey face features on white.

PuLID parses the 512 px aligned face with facexlib's BiSeNet (`init_parsing_model('bisenet')`: a ResNet-18
context path, attention refinement, feature fusion; 19 CelebAMask-HQ classes; weights `parsing_bisenet.pth`,
from zllrunning/face-parsing.PyTorch, MIT), on RGB / 255 normalised with ImageNet's mean and std. Pixels of
the classes in `BACKGROUND_LABELS` (background, ears, earring, neck, necklace, cloth, hat) become white and the
rest grey (ITU-R BT.601 luma, repeated on three channels), so that EVA-CLIP sees the face's features and not
its colours, hair colour aside, or its background.

**Why not facexlib itself.** Its `__init__` imports every submodule (tracking needs `filterpy`, others
`numba`), it requires the non-headless `opencv-python` (which would replace facestudio's
`opencv-python-headless` build of `cv2`), and its last release is from 2023. The network is small, so it is
defined here with facexlib's module names, and `parsing_bisenet.pth` loads key by key, every shape checked.
Only the main output is computed; the two auxiliary heads (`conv_out16`, `conv_out32`, used in training) are
loaded, as the file has them, but never run.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelFileError
from .checkpoints import describe_mismatch, read_tensors

#: Where facexlib downloads the weights from (facexlib's `init_parsing_model`).
BISENET_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
BISENET_FILENAME = "parsing_bisenet.pth"
LICENSE = "MIT"
NUM_CLASSES = 19
#: The classes PuLID whitens (`bg_label` in its pipelines): 0 background, 7 and 8 ears, 9 earring, 14 neck,
#: 15 necklace, 16 cloth, 18 hat.
BACKGROUND_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)
#: The parser's input normalisation (ImageNet's).
PARSE_MEAN, PARSE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ConvBN(nn.Module):
    """Convolution (no bias), BatchNorm, ReLU: facexlib's `ConvBNReLU` (`conv`, `bn`)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _Block(nn.Module):
    """ResNet basic block (`conv1`, `bn1`, `conv2`, `bn2`, `downsample`)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if cin != cout or stride != 1 else None)

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + residual)


class _ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2))
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            self.add_module(f"layer{i}", nn.Sequential(_Block(cin, cout, stride), _Block(cout, cout)))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _channel_attention(feat: torch.Tensor, *layers) -> torch.Tensor:
    """The global average of `feat` through `layers`, as sigmoid weights per channel."""
    atten = F.adaptive_avg_pool2d(feat, 1)
    for layer in layers:
        atten = layer(atten)
    return torch.sigmoid(atten)


class _Refinement(nn.Module):
    """Attention refinement module (`conv`, `conv_atten`, `bn_atten`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _ConvBN(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * _channel_attention(feat, self.conv_atten, self.bn_atten)


class _ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = _ResNet18()
        self.arm16 = _Refinement(256, 128)
        self.arm32 = _Refinement(512, 128)
        self.conv_head32 = _ConvBN(128, 128)
        self.conv_head16 = _ConvBN(128, 128)
        self.conv_avg = _ConvBN(512, 128, kernel=1, padding=0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))  # broadcast over the 1/32 grid
        up32 = self.conv_head32(F.interpolate(self.arm32(feat32) + context, feat16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        return feat8, up16, up32


class _Fusion(nn.Module):
    """Feature fusion module (`convblk`, `conv1`, `conv2`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = _ConvBN(cin, cout, kernel=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat((spatial, context), dim=1))
        return feat + feat * _channel_attention(feat, self.conv1, nn.ReLU(), self.conv2)


class _Head(nn.Module):
    """`conv` (ConvBNReLU) then a 1x1 `conv_out` to the class logits."""

    def __init__(self, cin: int, mid: int, classes: int):
        super().__init__()
        self.conv = _ConvBN(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet face parsing with facexlib's module names (so `parsing_bisenet.pth` loads key by key)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = _ContextPath()
        self.ffm = _Fusion(256, 256)
        self.conv_out = _Head(256, 256, num_classes)
        self.conv_out16 = _Head(128, 64, num_classes)  # auxiliary (training) heads: loaded, never run
        self.conv_out32 = _Head(128, 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits `[B, 19, H, W]` of normalised images `[B, 3, H, W]` (facexlib's first output)."""
        feat8, up16, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, up16))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


class FaceParser:
    """BiSeNet and the labels PuLID reads from it. Holds no per-call state (one serves several threads).

    Args:
        model (`BiSeNet`): in eval mode.
    """

    def __init__(self, model: BiSeNet):
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.cp.resnet.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.cp.resnet.conv1.weight.dtype

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 1, H, W]` class indices of RGB images `[B, 3, H, W]` in [0, 1]."""
        mean = torch.tensor(PARSE_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(PARSE_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = self.model(((images - mean) / std).to(self.device, self.dtype))
        return logits.argmax(dim=1, keepdim=True).to(images.device)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma `0.299 R + 0.587 G + 0.114 B` of `[B, 3, H, W]` images, on all three channels."""
    luma = 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]
    return luma.repeat(1, 3, 1, 1)


def whiten_background(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PuLID's face-features image: white where `labels` is a `BACKGROUND_LABELS` class, grey elsewhere."""
    background = torch.isin(labels, torch.tensor(BACKGROUND_LABELS, device=labels.device))
    return torch.where(background, torch.ones_like(images), to_gray(images))


def load_parser(source: str | os.PathLike | dict) -> FaceParser:
    """BiSeNet with the published `parsing_bisenet.pth` (a path, read with `torch.load(weights_only=True)`, or
    a state dict), every key and shape checked (BatchNorm's `num_batches_tracked` counters may be absent).

    Raises:
        ModelFileError: an unreadable file, or naming every missing, unexpected and mis-shaped key.
    """
    state = read_tensors(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    model = BiSeNet()
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()
                if not k.endswith("num_batches_tracked") or k in state}
    problems = describe_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise ModelFileError(f"{str(source)[:200]}: not facexlib's BiSeNet face parser ({BISENET_FILENAME}): "
                             f"{problems}")
    own.update({k: v.to(own[k].dtype) for k, v in state.items()})
    model.load_state_dict(own)
    return FaceParser(model.eval().requires_grad_(False))
