"""EVA02-CLIP-L-14-336's vision tower in plain torch, as PuLID reads it.

PuLID loads EVA-CLIP with its vendored `eva_clip` package (`create_model_and_transforms('EVA02-CLIP-L-14-336',
'eva_clip')`: QuanSun/EVA-CLIP's `EVA02_CLIP_L_336_psz14_s6B.pt`, MIT) and keeps `model.visual`. This module
is that network written for facestudio, its parameters named as the published `visual.*` keys so that the file
loads one to one:

* `patch_embed.proj` (14 px patches), `cls_token`, `pos_embed` (learned, one per token);
* 24 pre-norm blocks: `norm1`, attention with separate `q_proj` / `k_proj` / `v_proj` (no bias; `q_bias` and
  `v_bias` apart, k has none), 2-D rotary embedding on the patch tokens (not the class token), the attention's
  inner LayerNorm `inner_attn_ln` before `proj`; `norm2`, SwiGLU MLP `w3(ffn_ln(silu(w1 x) * w2 x))`;
* the final `norm`, the class token, `head` (1024 -> 768). Every LayerNorm has eps 1e-6.

The rotary tables (`rope.freqs_cos` / `freqs_sin`, one copy per block in the file) are constants: EVA's
`VisionRotaryEmbeddingFast` with the grid trained at 224 px (16 x 16) fitted to 336 px (24 x 24). They are
computed here (`rotary_tables`); where a file holds them, their shapes and values are checked against these.
tests/test_pulid_reference.py checks, on random weights in the published layout, that eva_clip's own tower
and this one give the same outputs.

What PuLID takes from the tower (`EVAVisionTransformer.forward(..., return_hidden=True)`):

* `embedding`: the 768-d CLIP image embedding (final norm, class token, `head`), which PuLID L2-normalises;
* `hidden`: the token sequences (class token first, 577 x 1024) *entering* blocks 4, 8, 12, 16 and 20,
  i.e. the outputs of blocks 3, 7, 11, 15, 19 (`HIDDEN_BLOCKS`), before any norm.

The input is the 336 px face image normalised with OpenAI CLIP's mean and std (`MEAN`, `STD`), which is what
`create_model` sets as `image_mean` / `image_std` for a pretrained tag with no statistics of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelFileError
from .checkpoints import describe_mismatch, read_tensors

#: The published weights (the reference downloads them with `create_model_and_transforms`).
HUB_REPO, FILENAME = "QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt"
LICENSE = "MIT"
#: eva_clip's `OPENAI_DATASET_MEAN` / `OPENAI_DATASET_STD`.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
#: EVA's LayerNorms (eva_clip builds them with `eps=1e-6`).
LN_EPS = 1e-6
#: The published file's prefix of the vision tower.
PREFIX = "visual."


@dataclass(frozen=True)
class EvaConfig:
    """Sizes of the tower (defaults: EVA02-CLIP-L-14-336).

    Attributes:
        image_size, patch_size (`int`): input side and patch side in pixels.
        dim, depth, heads (`int`): token width, blocks, attention heads.
        mlp_ratio (`float`): SwiGLU hidden width / width.
        embed_dim (`int`): width of the CLIP embedding (`head`'s output).
        rope_grid (`int`): the grid the rotary embedding was trained on (224 / 14 = 16), fitted to the input's.
        hidden_blocks (`tuple[int, ...]`): blocks whose outputs PuLID reads.
    """

    image_size: int = 336
    patch_size: int = 14
    dim: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4 * 2 / 3
    embed_dim: int = 768
    rope_grid: int = 16
    hidden_blocks: tuple[int, ...] = (3, 7, 11, 15, 19)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        """Tokens per image: the class token and the patches."""
        return 1 + self.grid ** 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def mlp_dim(self) -> int:
        """SwiGLU's hidden width (eva_clip's `int(width * mlp_ratio)`: 2730 for the published tower)."""
        return int(self.dim * self.mlp_ratio)


#: A tower of the same architecture at tiny widths, for tests (24 blocks, so the same blocks are read).
TINY_EVA = EvaConfig(image_size=56, dim=32, heads=2, embed_dim=24, rope_grid=2)


def rotary_tables(config: EvaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`(cos, sin)` `[grid * grid, head_dim]` of EVA's 2-D rotary embedding, row-major over the patch grid.

    Half of each head's channels turn with the patch's row, half with its column; within each half, channel
    pairs (2i, 2i + 1) share the frequency `10000 ** (-2i / half)`. Positions are measured on the trained grid
    (`rope_grid`), so a 24-patch side spans the same 0..16 range as the trained 16 (EVA's `intp_freq`).
    """
    half = config.head_dim // 2
    if config.head_dim % 4:
        raise ValueError(f"EVA's rotary embedding needs a head width divisible by 4, got {config.head_dim}")
    frequencies = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    positions = torch.arange(config.grid) / config.grid * config.rope_grid
    angles = torch.outer(positions, frequencies).repeat_interleave(2, dim=-1)  # [grid, half], pairs share
    n = config.grid
    table = torch.cat((angles[:, None, :].expand(n, n, half), angles[None, :, :].expand(n, n, half)), dim=-1)
    table = table.reshape(n * n, config.head_dim)
    return table.cos(), table.sin()


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the quarter turn of each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head self-attention with EVA's separate projections, rotary patches and inner LayerNorm."""

    def __init__(self, config: EvaConfig):
        super().__init__()
        dim, self.heads = config.dim, config.heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.inner_attn_ln = nn.LayerNorm(dim, eps=LN_EPS)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t):
            return t.view(b, n, self.heads, -1).transpose(1, 2)  # [B, heads, N, head_dim]

        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(self.k_proj(x))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        q, k = (torch.cat((t[:, :, :1], t[:, :, 1:] * cos + _rotate_pairs(t[:, :, 1:]) * sin), dim=2)
                for t in (q, k))  # the class token is not turned
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as EVA's
        return self.proj(self.inner_attn_ln(out.transpose(1, 2).reshape(b, n, -1)))


class SwiGLU(nn.Module):
    """EVA's gated MLP with the LayerNorm inside (`subln`)."""

    def __init__(self, config: EvaConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.mlp_dim)
        self.w2 = nn.Linear(config.dim, config.mlp_dim)
        self.ffn_ln = nn.LayerNorm(config.mlp_dim, eps=LN_EPS)
        self.w3 = nn.Linear(config.mlp_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class Block(nn.Module):
    """Pre-norm transformer block (no layer scale: the published tower has none)."""

    def __init__(self, config: EvaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=LN_EPS)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=LN_EPS)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: EvaConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # [B, patches, dim], row-major


class EvaVisionTransformer(nn.Module):
    """EVA02-CLIP's vision tower; `state_dict()` keys are the published `visual.*` keys without the prefix
    and without the rotary tables (kept as non-persistent buffers `rope_cos` / `rope_sin`)."""

    def __init__(self, config: EvaConfig = EvaConfig()):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens, config.dim))
        cos, sin = rotary_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=LN_EPS)
        self.head = nn.Linear(config.dim, config.embed_dim)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`(embedding, hidden)`: see `EvaTower.__call__`."""
        x = self.patch_embed(pixels)
        x = torch.cat((self.cls_token.expand(len(x), -1, -1), x), dim=1) + self.pos_embed
        hidden = []
        for index, block in enumerate(self.blocks):
            x = block(x, self.rope_cos, self.rope_sin)
            if index in self.config.hidden_blocks:
                hidden.append(x)
        return self.head(self.norm(x)[:, 0]), hidden


def build_tower(config: EvaConfig = EvaConfig()) -> EvaVisionTransformer:
    """The tower with `config`'s sizes, initial (not trained) weights, eval mode."""
    return EvaVisionTransformer(config).eval().requires_grad_(False)


class EvaTower:
    """The EVA-CLIP vision tower and what PuLID reads from it.

    Holds no per-call state, so one tower serves several threads.

    Args:
        model (`EvaVisionTransformer`): the network (`build_tower`, `load_tower`).
        config (`EvaConfig`): its sizes.
    """

    def __init__(self, model: EvaVisionTransformer, config: EvaConfig = EvaConfig()):
        self.model = model
        self.config = config

    @property
    def device(self) -> torch.device:
        return self.model.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.pos_embed.dtype

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`(embedding [B, embed_dim], hidden)` of normalised images `[B, 3, S, S]`; `hidden` holds one
        `[B, tokens, dim]` sequence per `hidden_blocks`, class token first."""
        size = self.config.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"EVA-CLIP takes [B, 3, {size}, {size}] images, got {list(pixels.shape)}")
        with torch.no_grad():
            return self.model(pixels.to(self.device, self.dtype))


def _is_rotary_table(key: str) -> bool:
    """`rope.freqs_cos` and its per-block copies `blocks.N.attn.rope.freqs_sin` (prefix removed)."""
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] == "rope" and parts[-1] in ("freqs_cos", "freqs_sin")


def tower_state(published: Mapping[str, torch.Tensor], model: EvaVisionTransformer, source: str = "EVA-CLIP"):
    """The tower's state dict from a published EVA-CLIP state (`visual.*`), every key and shape checked.

    The text tower and `logit_scale` are not read. Every other `visual.*` key must be one of the tower's, with
    its shape; the rotary tables, where present, must be the ones `rotary_tables` computes (then dropped).

    Raises:
        ModelFileError: no `visual.*` keys, or naming every missing, unexpected and mis-shaped key.
    """
    visual = {k[len(PREFIX):]: v for k, v in published.items() if k.startswith(PREFIX)}
    if not visual:
        found = sorted({k.split(".")[0] for k in published}) or ["nothing"]
        raise ModelFileError(f"{source}: not an EVA-CLIP checkpoint (no visual.* keys; found {', '.join(found)})")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tables = {k: v for k, v in visual.items() if _is_rotary_table(k)}
    weights = {k: v for k, v in visual.items() if k not in tables}
    problems = [describe_mismatch(own, {k: tuple(v.shape) for k, v in weights.items()}, PREFIX)]
    table_shape, shaped, unfitted = tuple(model.rope_cos.shape), [], []
    for key, table in tables.items():  # the same table per block: named once, with the count of copies
        expected = model.rope_cos if key.endswith("cos") else model.rope_sin
        if tuple(table.shape) != table_shape:
            shaped.append(f"{PREFIX}{key} {list(table.shape)}")
        elif (table.float() - expected.float().cpu()).abs().max() > 1e-2:  # 1e-2: a half-precision file
            unfitted.append(PREFIX + key)
    if shaped:
        problems.append(f"wrong shape rotary table {shaped[0]}" + (f" and {len(shaped) - 1} more" if len(shaped) > 1
                                                                   else "") + f" (expected {list(table_shape)})")
    if unfitted:
        problems.append(f"{unfitted[0]}" + (f" and {len(unfitted) - 1} more" if len(unfitted) > 1 else "")
                        + f" not the rotary table of a {model.config.rope_grid}-patch grid fitted to "
                        f"{model.config.grid}")
    problems = "; ".join(p for p in problems if p)
    if problems:
        raise ModelFileError(f"{source}: does not fit EVA02-CLIP-L-14-336: {problems}")
    return weights


def load_tower(source: str | os.PathLike | Mapping[str, torch.Tensor], config: EvaConfig = EvaConfig()) -> EvaTower:
    """The tower with published EVA-CLIP weights: a file (`EVA02_CLIP_L_336_psz14_s6B.pt`, read with
    `torch.load(weights_only=True)`, or a `.safetensors` with the same keys) or a state dict.

    Raises:
        ModelFileError: an unreadable file or a layout that does not fit (`tower_state`).
    """
    state = read_tensors(source) if isinstance(source, (str, os.PathLike)) else source
    model = build_tower(config)
    weights = tower_state(state, model, str(source)[:200] if isinstance(source, (str, os.PathLike)) else "EVA-CLIP")
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return EvaTower(model, config)


def normalise(images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """`(x - mean) / std` per channel of `[B, 3, H, W]` images in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s
