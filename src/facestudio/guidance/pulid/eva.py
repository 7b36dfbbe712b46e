"""EVA02-CLIP-L-14-336's vision tower through timm (`eva02_large_patch14_clip_336`), as PuLID reads it.

PuLID loads EVA-CLIP with its vendored `eva_clip` package (`create_model_and_transforms('EVA02-CLIP-L-14-336',
'eva_clip')`: QuanSun/EVA-CLIP's `EVA02_CLIP_L_336_psz14_s6B.pt`, MIT) and keeps `model.visual`. timm's
`eva02_large_patch14_clip_336` is the same network (SwiGLU MLP with its inner LayerNorm, the attention's
inner LayerNorm, separate q/k/v with q and v biases, 2-D rotary embedding fitted from a 16x16 to the 24x24
grid, the class token through the final norm and `head` to 768), and timm's EVA `checkpoint_filter_fn` maps
the published `visual.*` keys onto it: the only keys it drops are the rotary tables (`rope.freqs_cos/sin`),
constants timm computes itself. tests/test_pulid_reference.py checks, on random weights in the published
layout, that both give the same outputs.

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

from ...errors import ModelFileError
from .checkpoints import describe_mismatch, read_tensors

#: The published weights (the reference downloads them with `create_model_and_transforms`).
HUB_REPO, FILENAME = "QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt"
LICENSE = "MIT"
#: eva_clip's `OPENAI_DATASET_MEAN` / `OPENAI_DATASET_STD`.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EvaConfig:
    """Sizes of the tower (defaults: EVA02-CLIP-L-14-336).

    Attributes:
        image_size, patch_size (`int`): input side and patch side in pixels.
        width, depth, heads (`int`): token width, blocks, attention heads.
        mlp_ratio (`float`): SwiGLU hidden width / width.
        embed_dim (`int`): width of the CLIP embedding (`head`'s output).
        rope_grid (`int`): the grid the rotary embedding was trained on (224 / 14 = 16), fitted to the input's.
        hidden_blocks (`tuple[int, ...]`): blocks whose outputs PuLID reads.
    """

    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4 * 2 / 3
    embed_dim: int = 768
    rope_grid: int = 16
    hidden_blocks: tuple[int, ...] = (3, 7, 11, 15, 19)

    @property
    def tokens(self) -> int:
        """Tokens per image: the class token and the patches."""
        return 1 + (self.image_size // self.patch_size) ** 2


#: A tower of the same architecture at tiny widths, for tests (24 blocks, so the same blocks are read).
TINY_EVA = EvaConfig(image_size=56, width=32, heads=2, embed_dim=24, rope_grid=2)


def _timm():
    try:
        from timm.models import eva
    except ImportError as e:
        raise ModelFileError("PuLID's EVA-CLIP encoder needs timm: pip install 'facestudio[pulid]'") from e
    return eva


def build_tower(config: EvaConfig = EvaConfig()) -> torch.nn.Module:
    """timm's EVA with `config`'s sizes, random weights, eval mode (`eva02_large_patch14_clip_336`'s
    arguments for the default config)."""
    eva = _timm()
    model = eva.Eva(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.width, depth=config.depth,
        num_heads=config.heads, mlp_ratio=config.mlp_ratio, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
        scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(config.rope_grid, config.rope_grid),
        num_classes=config.embed_dim, global_pool="token",
    )
    return model.eval().requires_grad_(False)


class EvaTower:
    """The EVA-CLIP vision tower and what PuLID reads from it.

    Holds no per-call state, so one tower serves several threads.

    Args:
        model (`torch.nn.Module`): a timm `Eva` (`build_tower`, `load_tower`).
        config (`EvaConfig`): its sizes.
    """

    def __init__(self, model: torch.nn.Module, config: EvaConfig = EvaConfig()):
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
        `[B, tokens, width]` sequence per `hidden_blocks`, class token first."""
        size = self.config.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"EVA-CLIP takes [B, 3, {size}, {size}] images, got {list(pixels.shape)}")
        with torch.no_grad():
            final, levels = self.model.forward_intermediates(
                pixels.to(self.device, self.dtype), indices=list(self.config.hidden_blocks),
                return_prefix_tokens=True, norm=False, output_fmt="NLC")
            embedding = self.model.forward_head(final)
        return embedding, [torch.cat((prefix, patches), dim=1) for patches, prefix in levels]


def tower_state(published: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str = "EVA-CLIP"):
    """The timm state dict of a published EVA-CLIP state (`visual.*`), every key and shape checked.

    The text tower and `logit_scale` are not read; of the `visual.*` keys only the rotary tables are dropped
    (timm recomputes them). Shapes are compared before timm's filter could resample a position table or a
    patch embedding of another size.

    Raises:
        ModelFileError: no `visual.*` keys, or naming every missing, unexpected and mis-shaped key.
    """
    eva = _timm()
    visual = {k: v for k, v in published.items() if k.startswith("visual.")}
    if not visual:
        found = sorted({k.split(".")[0] for k in published}) or ["nothing"]
        raise ModelFileError(f"{source}: not an EVA-CLIP checkpoint (no visual.* keys; found {', '.join(found)})")
    own = model.state_dict()
    for key, own_key in (("visual.pos_embed", "pos_embed"), ("visual.patch_embed.proj.weight",
                                                                "patch_embed.proj.weight")):
        if key in visual and tuple(visual[key].shape) != tuple(own[own_key].shape):
            raise ModelFileError(f"{source}: does not fit EVA02-CLIP-L-14-336: {key} has shape "
                                 f"{list(visual[key].shape)}, expected {list(own[own_key].shape)}")
    mapped = eva.checkpoint_filter_fn(visual, model)
    problems = describe_mismatch({k: tuple(v.shape) for k, v in own.items()},
                                 {k: tuple(v.shape) for k, v in mapped.items()})
    if problems:
        raise ModelFileError(f"{source}: does not fit EVA02-CLIP-L-14-336 (in timm's names): {problems}")
    return mapped


def load_tower(source: str | os.PathLike | Mapping[str, torch.Tensor], config: EvaConfig = EvaConfig()) -> EvaTower:
    """The tower with published EVA-CLIP weights: a file (`EVA02_CLIP_L_336_psz14_s6B.pt`, read with
    `torch.load(weights_only=True)`, or a `.safetensors` with the same keys) or a state dict.

    Raises:
        ModelFileError: an unreadable file or a layout that does not fit (`tower_state`).
    """
    state = read_tensors(source) if isinstance(source, (str, os.PathLike)) else source
    model = build_tower(config)
    model.load_state_dict({k: v.float() for k, v in tower_state(state, model, str(source)[:200]).items()})
    return EvaTower(model, config)


def normalise(images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """`(x - mean) / std` per channel of `[B, 3, H, W]` images in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s
