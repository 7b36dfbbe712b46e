"""The published PuLID code (ToTheBeginning/PuLID) and facexlib's BiSeNet, loaded as an oracle for tests only.

Nothing here is part of facestudio: it reads the reference sources from a checkout or a bare git mirror and
runs them as they are. Where the sources come from:

* PuLID: `$PULID_REFERENCE` (a checkout, or a bare git directory), else `/work/.mirror/ToTheBeginning+PuLID/repo`;
* facexlib: `$FACEXLIB_REFERENCE`, else `/work/.mirror/xinntao+facexlib/repo`.

Only modules that need nothing outside facestudio's test environment are loaded: `pulid/encoders.py` (v1's
MLP encoder), `pulid/encoders_transformer.py` (the ID former), `eva_clip`'s vision tower
(`model._build_vision_tower` with `eva_vit_model`, `rope`, `transformer`, `utils`, `timm_model`,
`modified_resnet`), facexlib's `parsing/bisenet.py` and `parsing/resnet.py`, and the pipelines' own
`get_id_embedding` / `to_gray` methods with `pulid/utils.py`'s `img2tensor` (cut out of their files with `ast`,
because the files import insightface, facexlib and basicsr at the top). `rope.py` needs `einops`; when it
is not installed, `_einops_shim` stands in for the three patterns `rope.py` uses (and refuses any other).
eva_clip's files import timm and torchvision at their top for initialisers and a ResNet helper the vision
tower does not run; neither can be installed next to facestudio's CPU torch, so `_eva_import_shims` stands in
for those names while the files load, and the pipelines' two torchvision calls (`normalize`, `resize`) are
restated as torchvision 0.15.2 computes them on float tensors (`pinned_normalize`, `pinned_resize`).

The only stand-ins are for what facestudio replaces by its own code: face detection / 512 alignment
(facexlib's `FaceRestoreHelper`) and insightface's `FaceAnalysis` (the antelopev2 embedding). Everything from
the aligned face and the embedding on is the reference's own code.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

DEFAULT_PULID = Path("/work/.mirror/ToTheBeginning+PuLID/repo")
DEFAULT_FACEXLIB = Path("/work/.mirror/xinntao+facexlib/repo")


class Source:
    """Files of one repository, from a checkout or a bare git directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bare = not (self.root / ".git").exists() and (self.root / "HEAD").is_file() and \
            (self.root / "objects").is_dir()

    def read(self, path: str) -> str:
        if self.bare:
            return subprocess.run(["git", f"--git-dir={self.root}", "show", f"HEAD:{path}"], check=True,
                                  capture_output=True, text=True).stdout
        return (self.root / path).read_text()

    def has(self, path: str) -> bool:
        if self.bare:
            return subprocess.run(["git", f"--git-dir={self.root}", "cat-file", "-e", f"HEAD:{path}"],
                                  capture_output=True).returncode == 0
        return (self.root / path).is_file()


def pulid_source() -> Source | None:
    root = Path(os.environ.get("PULID_REFERENCE", DEFAULT_PULID))
    source = Source(root) if root.exists() else None
    return source if source is not None and source.has("pulid/encoders_transformer.py") else None


def facexlib_source() -> Source | None:
    root = Path(os.environ.get("FACEXLIB_REFERENCE", DEFAULT_FACEXLIB))
    source = Source(root) if root.exists() else None
    return source if source is not None and source.has("facexlib/parsing/bisenet.py") else None


def missing_reason() -> str | None:
    """Why the oracle cannot run (None when it can)."""
    if pulid_source() is None:
        return (f"the PuLID reference code is absent (set PULID_REFERENCE to a checkout of "
                f"ToTheBeginning/PuLID; looked in {os.environ.get('PULID_REFERENCE', DEFAULT_PULID)})")
    if facexlib_source() is None:
        return (f"facexlib's code is absent (set FACEXLIB_REFERENCE to a checkout of xinntao/facexlib; looked "
                f"in {os.environ.get('FACEXLIB_REFERENCE', DEFAULT_FACEXLIB)})")
    return None


# ------------------------------------------------------------------------------------------------ loading


def _module(name: str, code: str, filename: str, package: str | None = None, is_package: bool = False):
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__package__ = name if is_package else (package or name.rpartition(".")[0])
    if is_package:
        module.__path__ = []
    sys.modules[name] = module
    exec(compile(code, filename, "exec"), module.__dict__)
    return module


def _einops_shim() -> types.ModuleType:
    """`rearrange` / `repeat` for exactly the patterns eva_clip's `rope.py` uses."""

    def rearrange(x, pattern, **sizes):
        if pattern == "... (d r) -> ... d r":
            return x.unflatten(-1, (-1, sizes["r"]))
        if pattern == "... d r -> ... (d r)":
            return x.flatten(-2)
        raise NotImplementedError(f"einops shim: pattern {pattern!r}")

    def repeat(x, pattern, **sizes):
        if pattern == "... n -> ... (n r)":
            return x.unsqueeze(-1).expand(*x.shape, sizes["r"]).flatten(-2)
        raise NotImplementedError(f"einops shim: pattern {pattern!r}")

    shim = types.ModuleType("einops")
    shim.rearrange, shim.repeat = rearrange, repeat
    return shim


def _eva_import_shims() -> dict[str, types.ModuleType]:
    """Stand-ins for the timm and torchvision names eva_clip's model files import at their top.

    timm and torchvision cannot be installed next to facestudio's torch (PyPI's torchvision does not load on
    the CPU torch build), and the vision tower uses neither at run time: `trunc_normal_` only initialises
    weights (the oracle draws its own), `drop_path` is the identity at the published rate 0 and in eval mode,
    `to_2tuple` is a pair, and `FrozenBatchNorm2d` only converts ResNet towers. Each stand-in refuses what
    the tower would not do, so that it cannot change what the oracle computes. `timm.models` is absent on
    purpose: `timm_model.py` then takes its own `timm = None` path. These modules exist only in this test
    support script, only while eva_clip's files are loaded; facestudio itself imports neither timm nor
    torchvision."""

    def drop_path(x, drop_prob=0.0, training=False):
        if drop_prob and training:
            raise NotImplementedError("timm shim: drop_path in training")
        return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    class FrozenBatchNorm2d(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("torchvision shim: FrozenBatchNorm2d (ResNet towers only)")

    timm = types.ModuleType("timm")
    timm.layers = types.ModuleType("timm.layers")
    timm.layers.drop_path, timm.layers.to_2tuple = drop_path, to_2tuple
    timm.layers.trunc_normal_ = torch.nn.init.trunc_normal_  # same signature (mean, std, a, b)
    torchvision = types.ModuleType("torchvision")
    torchvision.ops = types.ModuleType("torchvision.ops")
    torchvision.ops.misc = types.ModuleType("torchvision.ops.misc")
    torchvision.ops.misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    return {"timm": timm, "timm.layers": timm.layers, "torchvision": torchvision,
            "torchvision.ops": torchvision.ops, "torchvision.ops.misc": torchvision.ops.misc}


@lru_cache(maxsize=None)
def reference() -> types.SimpleNamespace:
    """The reference modules: `encoders`, `encoders_transformer`, `eva_model` (eva_clip's `model.py`),
    `eva_transformer`, `bisenet`, and `methods` (the pipelines' `get_id_embedding` per version)."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    pulid, facexlib = pulid_source(), facexlib_source()
    try:
        import einops  # noqa: F401
    except ImportError:
        sys.modules.setdefault("einops", _einops_shim())
    root = "_pulid_reference"
    _module(root, "", "<pulid reference>", is_package=True)
    ns = types.SimpleNamespace()
    ns.encoders = _module(f"{root}.encoders", pulid.read("pulid/encoders.py"), "pulid/encoders.py")
    ns.encoders_transformer = _module(f"{root}.encoders_transformer", pulid.read("pulid/encoders_transformer.py"),
                                      "pulid/encoders_transformer.py")
    eva = f"{root}.eva_clip"
    _module(eva, "", "eva_clip/__init__.py", is_package=True)
    shims = _eva_import_shims()
    for name in ("rope", "utils", "transformer", "eva_vit_model", "modified_resnet", "timm_model", "model"):
        # modified_resnet.py imports `eva_clip.utils` by its absolute name: alias it while loading only; the
        # timm / torchvision stand-ins (`_eva_import_shims`) are likewise there only while loading
        aliases = {"eva_clip": sys.modules[eva], "eva_clip.utils": getattr(ns, "eva_utils", None), **shims}
        added = [k for k, v in aliases.items() if v is not None and k not in sys.modules]
        sys.modules.update({k: aliases[k] for k in added})
        try:
            module = _module(f"{eva}.{name}", pulid.read(f"eva_clip/{name}.py"), f"eva_clip/{name}.py")
        finally:
            for k in added:
                del sys.modules[k]
        setattr(ns, f"eva_{name}", module)
    constants = _module(f"{eva}.constants", pulid.read("eva_clip/constants.py"), "eva_clip/constants.py")
    ns.eva_mean, ns.eva_std = constants.OPENAI_DATASET_MEAN, constants.OPENAI_DATASET_STD
    ns.eva_config = __import__("json").loads(pulid.read("eva_clip/model_configs/EVA02-CLIP-L-14-336.json"))
    parsing = f"{root}.facexlib_parsing"
    _module(parsing, "", "facexlib/parsing/__init__.py", is_package=True)
    _module(f"{parsing}.resnet", facexlib.read("facexlib/parsing/resnet.py"), "facexlib/parsing/resnet.py")
    ns.bisenet = _module(f"{parsing}.bisenet", facexlib.read("facexlib/parsing/bisenet.py"),
                         "facexlib/parsing/bisenet.py")
    ns.methods = {
        "v1": _methods(pulid, "pulid/pipeline.py"),
        "v1.1": _methods(pulid, "pulid/pipeline_v1_1.py"),
        "flux": _methods(pulid, "pulid/pipeline_flux.py"),
    }
    return ns


def _methods(pulid: Source, path: str) -> dict:
    """`get_id_embedding` and `to_gray` of a pipeline file, compiled with what their bodies use."""
    import cv2

    tree = ast.parse(pulid.read(path))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PuLIDPipeline")
    wanted = [node for node in cls.body if isinstance(node, ast.FunctionDef)
              and node.name in ("get_id_embedding", "to_gray")]
    utils = ast.parse(pulid.read("pulid/utils.py"))
    helpers = [node for node in utils.body if isinstance(node, ast.FunctionDef)
               and node.name in ("img2tensor", "tensor2img")]
    namespace = {"cv2": cv2, "torch": torch, "np": np, "normalize": pinned_normalize, "resize": pinned_resize,
                 "InterpolationMode": InterpolationMode, "make_grid": None, "math": __import__("math")}
    for node in helpers + wanted:
        node.decorator_list = []  # @torch.no_grad(): the callers run under no_grad anyway
        exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)
    return {name: namespace[name] for name in ("get_id_embedding", "to_gray")}


# The pipelines' torchvision calls, restated for float tensors as torchvision 0.15.2 (PuLID's `requirements.txt`
# pin) computes them, because torchvision cannot be installed here (see `_eva_import_shims`). Test support only.


class InterpolationMode:
    """The one member of torchvision's enum the pipelines use."""

    BICUBIC = "bicubic"


def pinned_normalize(tensor, mean, std):
    """`torchvision.transforms.functional.normalize` of a float tensor: `(x - mean) / std` per channel, on a
    copy (its default `inplace=False`)."""
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.clone().sub_(mean).div_(std)


def pinned_resize(image, size, interpolation):
    """torchvision 0.15.2's `resize` of a float tensor: an int `size` is the shorter side (the longer one
    `int(size * long / short)`), then `F.interpolate` with `align_corners=False` and no antialiasing
    (`antialias` defaulted to "warn", i.e. off for tensors, until 0.17), no clamp for float tensors."""
    if interpolation != InterpolationMode.BICUBIC:
        raise NotImplementedError(f"torchvision stand-in: interpolation {interpolation!r}")
    h, w = image.shape[-2:]
    if isinstance(size, int):
        short, long = min(h, w), max(h, w)
        other = int(size * long / short)
        size = (size, other) if h <= w else (other, size)
    return torch.nn.functional.interpolate(image, size=tuple(size), mode="bicubic", align_corners=False,
                                           antialias=False)


# ------------------------------------------------------------------------------------------------ models


def eva_vision_tower(vision_cfg: dict | None = None, embed_dim: int | None = None) -> torch.nn.Module:
    """The reference EVA-CLIP vision tower, built by eva_clip's own `_build_vision_tower`, in eval mode.

    Args:
        vision_cfg (`dict`, *optional*): overrides of EVA02-CLIP-L-14-336's `vision_cfg` (tiny widths).
        embed_dim (`int`, *optional*): the CLIP embedding width (768).
    """
    ref = reference()
    cfg = dict(ref.eva_config["vision_cfg"], **(vision_cfg or {}))
    tower = ref.eva_model._build_vision_tower(embed_dim or ref.eva_config["embed_dim"], cfg)
    tower.image_mean, tower.image_std = ref.eva_mean, ref.eva_std  # what `create_model` sets
    return tower.eval()


def published_eva_state(tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower's weights as QuanSun/EVA-CLIP's `EVA02_CLIP_L_336_psz14_s6B.pt` holds them (`visual.*`)."""
    return {f"visual.{k}": v.clone() for k, v in tower.state_dict().items()}


def randomise_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter and float buffer random, at the magnitudes of a trained network, so that no layer is an
    identity by initialisation and activations stay of order one through deep stacks (as real ones do):
    weight matrices and kernels normal with std `1 / sqrt(fan_in)` (`proj_out`, applied as `x @ proj_out`,
    by its first dimension), norm weights `1 + N(0, scale)`, biases and embeddings `N(0, scale)`, BatchNorm
    variances `1 + |N(0, 4 scale)|`. Rotary tables are left as computed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point() or "rope" in name or "freqs" in name:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                tensor.copy_(1 + (noise * scale * 4).abs())
            elif leaf == "proj_out":
                tensor.copy_(noise * tensor.shape[0] ** -0.5)
            elif tensor.ndim >= 2 and leaf == "weight":
                tensor.copy_(noise * (tensor[0].numel()) ** -0.5)
            elif tensor.ndim == 1 and leaf == "weight":  # LayerNorm / BatchNorm scales
                tensor.copy_(1 + noise * scale)
            else:
                tensor.copy_(noise * scale)
    return module


class _FaceHelper:
    """Stands in for facexlib's `FaceRestoreHelper` after detection and 512 alignment: it holds the aligned face
    (BGR, as facexlib's `cropped_faces`) and the reference BiSeNet as `face_parse`."""

    def __init__(self, aligned_rgb: np.ndarray, face_parse):
        self._aligned_bgr = np.ascontiguousarray(aligned_rgb[..., ::-1])
        self.face_parse = face_parse
        self.cropped_faces = []

    def clean_all(self):
        self.cropped_faces = []

    def read_image(self, image):
        pass

    def get_face_landmarks_5(self, only_center_face=True):
        pass

    def align_warp_face(self):
        self.cropped_faces = [self._aligned_bgr]


class _FaceAnalysis:
    """Stands in for insightface's `FaceAnalysis.get`: one face with the given raw antelopev2 embedding."""

    def __init__(self, embedding: np.ndarray):
        self.embedding = embedding

    def get(self, image_bgr):
        h, w = image_bgr.shape[:2]
        return [{"bbox": np.array([0, 0, w, h], np.float32), "embedding": self.embedding}]


def get_id_embedding(pulid_version: str, photos, id_encoder, eva_tower, parser):
    """Run the reference pipeline's own `get_id_embedding` on photos given as `(image_rgb, aligned_rgb_512,
    raw_embedding)`, the face detection / alignment / insightface stand-ins answering with them.

    Returns:
        `(cond, uncond)` tokens, in the order each version returns them.
    """
    ref = reference()
    family = "flux" if pulid_version.startswith("flux") else pulid_version
    method, to_gray = ref.methods[family]["get_id_embedding"], ref.methods[family]["to_gray"]

    def pipeline_for(aligned, embedding):
        self = types.SimpleNamespace(device="cpu", weight_dtype=torch.float32, debug_img_list=[],
                                     face_helper=_FaceHelper(aligned, parser), app=_FaceAnalysis(embedding),
                                     clip_vision_model=eva_tower, eva_transform_mean=eva_tower.image_mean,
                                     eva_transform_std=eva_tower.image_std)
        self.to_gray = partial(to_gray, self)
        self.id_adapter = self.pulid_encoder = id_encoder
        return self

    with torch.no_grad():
        if family == "v1.1":  # one call with every photo (the encoder reads them together)
            first = pipeline_for(*photos[0][1:])
            # each photo's stand-ins answer in turn: FaceAnalysis.get and the helper are per call of the loop
            queue = list(photos)

            class _Queue:
                def get(self_inner, image_bgr):
                    return _FaceAnalysis(queue[0][2]).get(image_bgr)

            class _Helper(_FaceHelper):
                def align_warp_face(self_inner):
                    photo = queue.pop(0)
                    self_inner.cropped_faces = [np.ascontiguousarray(photo[1][..., ::-1])]

            first.app, first.face_helper = _Queue(), _Helper(photos[0][1], parser)
            uncond, cond = method(first, [p[0] for p in photos])
            return cond, uncond
        if family == "flux":
            cond, uncond = method(pipeline_for(*photos[0][1:]), photos[0][0], cal_uncond=True)
            return cond, uncond
        both = method(pipeline_for(*photos[0][1:]), photos[0][0])  # v1: [uncond; cond]
        return both[1:], both[:1]


def bisenet(seed: int = 0) -> torch.nn.Module:
    """facexlib's BiSeNet (19 classes), random weights, eval mode."""
    return randomise_(reference().bisenet.BiSeNet(num_class=19), seed).eval()


def _reference_mlp(in_dim: int, hidden: int, out_dim: int) -> torch.nn.Sequential:
    """The pattern every MLP of `encoders.py` / `encoders_transformer.py` is written in, at other widths."""
    nn = torch.nn
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))


def id_encoder(pulid_version: str, config, seed: int = 0) -> torch.nn.Module:
    """The reference's ID encoder for a facestudio config (`MLPEncoderConfig` or `IDFormerConfig`), random.

    The reference constructors take the token sizes but write the EVA-CLIP widths (1024 in, 1024 hidden) and
    `id_cond`'s (1280) as literals. For configs with other widths (the tiny ones), those MLPs are rebuilt in
    the reference's own pattern at the config's widths; `forward` is the reference's, untouched. At the
    published widths nothing is rebuilt.
    """
    ref = reference()
    published = (config.id_dim, config.vit_dim, config.hidden_dim) == (1280, 1024, 1024)
    torch.manual_seed(seed)
    if pulid_version == "v1":
        module = ref.encoders.IDEncoder(width=config.id_dim, context_dim=config.context_dim,
                                        num_token=config.num_tokens)
        if not published:
            module.body = _reference_mlp(config.id_dim, config.hidden_dim, config.context_dim * config.num_tokens)
            for i in range(5):
                setattr(module, f"mapping_{i}", _reference_mlp(config.vit_dim, config.hidden_dim, config.context_dim))
                setattr(module, f"mapping_patch_{i}",
                        _reference_mlp(config.vit_dim, config.hidden_dim, config.context_dim))
    else:
        module = ref.encoders_transformer.IDFormer(
            dim=config.dim, depth=config.depth, dim_head=config.dim_head, heads=config.heads,
            num_id_token=config.num_id_tokens, num_queries=config.num_queries, output_dim=config.output_dim,
            ff_mult=config.ff_mult)
        if not published:
            for i in range(5):
                setattr(module, f"mapping_{i}", _reference_mlp(config.vit_dim, config.hidden_dim, config.dim))
            module.id_embedding_mapping = _reference_mlp(config.id_dim, config.hidden_dim,
                                                         config.dim * config.num_id_tokens)
    return randomise_(module, seed).eval()
