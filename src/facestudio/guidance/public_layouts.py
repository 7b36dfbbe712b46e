"""Key-and-shape layouts of the public IP-Adapter family checkpoints, generated from a UNet.

Each function returns the flat `{key: shape}` layout of one published checkpoint kind, in the original
(tencent-ailab) key names of the `{"image_proj": ..., "ip_adapter": ...}` format with the `image_proj.` /
`ip_adapter.` prefixes of a flat safetensors file (ADAPTER-FORMATS.md §2). The layouts are written here from
`Linear` / `LayerNorm` shapes alone; the UNet's side is read from its `Attention` modules, never from block
names, so one generator covers SD 1.5, SDXL and the tiny test UNet.

Uses: checking a downloaded or converted file key by key before loading it, knowing a checkpoint's size
without the file, and making stand-in weights (`zeros_state_dict`) for tests that must not download.

Example:

```py
>>> import accelerate
>>> from diffusers import UNet2DConditionModel
>>> from facestudio.guidance.public_layouts import faceid, parameter_count
>>> from facestudio.models import sd15_unet_config

>>> with accelerate.init_empty_weights():  # meta tensors: no memory for SD 1.5's 860 M weights
...     unet = UNet2DConditionModel(**sd15_unet_config())
>>> parameter_count(faceid(unet))  # ip-adapter-faceid_sd15.bin
48354816
```
"""

from __future__ import annotations

import math

import torch

from .layout import cross_attention_layers

Layout = dict[str, tuple[int, ...]]

# Published defaults (ADAPTER-FORMATS.md §1.6, §2, §3).
ARCFACE_DIM = 512  # insightface buffalo_l `normed_embedding`
CLIP_VIT_H_HIDDEN = 1280  # CLIP ViT-H/14 `hidden_states[-2]` width (Plus, Plus-Face, FaceID-Plus, Full-Face)
CLIP_VIT_H_EMBEDS = 1024  # CLIP ViT-H/14 projected `image_embeds` width (base IP-Adapter)
PERCEIVER_DEPTH = 4
PERCEIVER_DIM_HEAD = 64  # diffusers derives heads as to_q.out // 64 (§1.2), so this is not a free choice
PERCEIVER_FF_MULT = 4


def faceid(
    unet,
    lora_rank: int = 128,
    num_tokens: int = 4,
    id_dim: int = ARCFACE_DIM,
) -> Layout:
    """Layout of IP-Adapter-FaceID (`ip-adapter-faceid_sd15.bin`, ADAPTER-FORMATS.md §2.1).

    `image_proj` is an MLP `Linear(id, 2·id) → GELU → Linear(2·id, T·D)` reshaped to T tokens of width D (the
    UNet's cross-attention width), then `LayerNorm(D)`. `ip_adapter` holds the decoupled key/value projections
    of every cross-attention layer plus a LoRA on `to_q`, `to_k`, `to_v` and `to_out` of **every** attention
    processor, self-attention included.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet the adapter is for; may live on the meta device. Only its `Attention` modules are read.
        lora_rank (`int`, defaults to 128):
            Rank of the LoRA; 0 leaves the LoRA keys out (the FaceID-Portrait layout, §2.4, with `num_tokens=16`).
        num_tokens (`int`, defaults to 4):
            Identity tokens per face. FaceID-Portrait uses 16.
        id_dim (`int`, defaults to 512):
            Width of the face-recognition embedding (ArcFace / insightface buffalo_l).

    Returns:
        `dict[str, tuple[int, ...]]`: flat checkpoint key → shape, `image_proj.*` then `ip_adapter.*`.
    """
    cross_dim = _cross_attention_dim(unet)
    layout = _prefixed("image_proj", _id_mlp(id_dim, cross_dim, num_tokens))
    layout.update(_prefixed("ip_adapter", {**_ip_layers(unet), **_lora_layers(unet, lora_rank)}))
    return layout


def faceid_plus(
    unet,
    lora_rank: int = 128,
    id_dim: int = ARCFACE_DIM,
    clip_dim: int = CLIP_VIT_H_HIDDEN,
) -> Layout:
    """Layout of IP-Adapter-FaceID-Plus and -PlusV2 (`ip-adapter-faceid-plus{,v2}_sd15.bin`, ADAPTER-FORMATS.md §2.2).

    Plus and PlusV2 share this layout; they differ only in the `shortcut` used at inference, so the weights
    cannot tell them apart. `image_proj` is the FaceID MLP (4 tokens, fixed: diffusers' FaceID-Plus class does
    not read the token count from the file, §1.2) followed by a perceiver resampler over CLIP ViT-H hidden
    states, under `perceiver_resampler.`, with width D = the UNet's cross-attention width and 64-wide heads.
    `ip_adapter` is the same as FaceID's.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet the adapter is for; may live on the meta device.
        lora_rank (`int`, defaults to 128):
            Rank of the LoRA on every attention processor; 0 leaves it out.
        id_dim (`int`, defaults to 512):
            Width of the face-recognition embedding.
        clip_dim (`int`, defaults to 1280):
            Width of the image encoder's hidden states (CLIP ViT-H/14 `hidden_states[-2]`).

    Returns:
        `dict[str, tuple[int, ...]]`: flat checkpoint key → shape.
    """
    cross_dim = _cross_attention_dim(unet)
    image_proj = _id_mlp(id_dim, cross_dim, num_tokens=4)
    image_proj.update(_prefixed("perceiver_resampler", _perceiver(cross_dim, clip_dim, cross_dim)))
    layout = _prefixed("image_proj", image_proj)
    layout.update(_prefixed("ip_adapter", {**_ip_layers(unet), **_lora_layers(unet, lora_rank)}))
    return layout


def plus_face(
    unet,
    num_queries: int = 16,
    clip_dim: int = CLIP_VIT_H_HIDDEN,
    resampler_dim: int | None = None,
) -> Layout:
    """Layout of IP-Adapter Plus and Plus-Face (`ip-adapter-plus{,-face}_sd15.safetensors`, ADAPTER-FORMATS.md §2.3).

    `image_proj` is a perceiver resampler with learned queries (`latents`): CLIP hidden states →
    `proj_in` → 4 × (cross-attention of the queries, feed-forward) → `proj_out` → `norm_out`, one output token
    per query. `ip_adapter` holds only the decoupled key/value projections (no LoRA). The same layout is
    InstantID's `ip-adapter.bin` (§1.2).

    Args:
        unet (`UNet2DConditionModel`):
            The UNet the adapter is for; may live on the meta device.
        num_queries (`int`, defaults to 16):
            Number of learned queries, i.e. image tokens per image.
        clip_dim (`int`, defaults to 1280):
            Width of the image encoder's hidden states (CLIP ViT-H/14).
        resampler_dim (`int`, *optional*):
            Inner width of the resampler, a multiple of 64. Defaults to the UNet's cross-attention width, as in
            the SD 1.5 files; SDXL's ViT-H Plus-Face uses 1280 (§2.4).

    Returns:
        `dict[str, tuple[int, ...]]`: flat checkpoint key → shape.
    """
    cross_dim = _cross_attention_dim(unet)
    dim = cross_dim if resampler_dim is None else resampler_dim
    image_proj = {"latents": (1, num_queries, dim)}
    image_proj.update(_perceiver(dim, clip_dim, cross_dim))
    layout = _prefixed("image_proj", image_proj)
    layout.update(_prefixed("ip_adapter", _ip_layers(unet)))
    return layout


def full_face(unet, clip_dim: int = CLIP_VIT_H_HIDDEN) -> Layout:
    """Layout of IP-Adapter Full-Face (`ip-adapter-full-face_sd15.safetensors`, ADAPTER-FORMATS.md §2.3).

    `image_proj` is `Linear(clip, clip) → GELU → Linear(clip, D) → LayerNorm(D)` applied to each of the 257
    CLIP hidden-state tokens (keys `proj.0`, `proj.2`, `proj.3`); `ip_adapter` holds the decoupled key/value
    projections only.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet the adapter is for; may live on the meta device.
        clip_dim (`int`, defaults to 1280):
            Width of the image encoder's hidden states (CLIP ViT-H/14).

    Returns:
        `dict[str, tuple[int, ...]]`: flat checkpoint key → shape.
    """
    cross_dim = _cross_attention_dim(unet)
    image_proj = {**_linear("proj.0", clip_dim, clip_dim), **_linear("proj.2", clip_dim, cross_dim),
                  **_layer_norm("proj.3", cross_dim)}
    layout = _prefixed("image_proj", image_proj)
    layout.update(_prefixed("ip_adapter", _ip_layers(unet)))
    return layout


def base(unet, num_tokens: int = 4, clip_dim: int = CLIP_VIT_H_EMBEDS) -> Layout:
    """Layout of the base IP-Adapter (`ip-adapter_sd15.safetensors`, ADAPTER-FORMATS.md §2.4).

    `image_proj` is `Linear(clip, T·D)` on the CLIP image embedding, reshaped to T tokens, then `LayerNorm(D)`
    (keys `proj`, `norm`); `ip_adapter` holds the decoupled key/value projections only.

    Args:
        unet (`UNet2DConditionModel`):
            The UNet the adapter is for; may live on the meta device.
        num_tokens (`int`, defaults to 4):
            Image tokens per image. diffusers assumes 4 for this format (§1.2), so another value does not load there.
        clip_dim (`int`, defaults to 1024):
            Width of the image encoder's projected `image_embeds` (CLIP ViT-H/14).

    Returns:
        `dict[str, tuple[int, ...]]`: flat checkpoint key → shape.
    """
    cross_dim = _cross_attention_dim(unet)
    image_proj = {**_linear("proj", clip_dim, num_tokens * cross_dim), **_layer_norm("norm", cross_dim)}
    layout = _prefixed("image_proj", image_proj)
    layout.update(_prefixed("ip_adapter", _ip_layers(unet)))
    return layout


def zeros_state_dict(layout: Layout, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Zero tensors with the keys and shapes of `layout`, in its key order.

    Args:
        layout (`dict[str, tuple[int, ...]]`):
            A layout from this module.
        dtype (`torch.dtype`, defaults to `torch.float16`):
            Data type of the tensors; the published files are float16.

    Returns:
        `dict[str, torch.Tensor]`, ready for `safetensors.torch.save_file`.
    """
    return {key: torch.zeros(shape, dtype=dtype) for key, shape in layout.items()}


def parameter_count(layout: Layout) -> int:
    """Number of parameters (tensor elements) in `layout`."""
    return sum(math.prod(shape) for shape in layout.values())


# --- building blocks: Linear / LayerNorm shapes --------------------------------------------------------------


def _linear(name: str, in_features: int, out_features: int, bias: bool = True) -> Layout:
    layout = {f"{name}.weight": (out_features, in_features)}
    if bias:
        layout[f"{name}.bias"] = (out_features,)
    return layout


def _layer_norm(name: str, dim: int) -> Layout:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def _prefixed(prefix: str, layout: Layout) -> Layout:
    return {f"{prefix}.{key}": shape for key, shape in layout.items()}


def _id_mlp(id_dim: int, cross_dim: int, num_tokens: int) -> Layout:
    """FaceID's identity MLP: `proj.0`, GELU, `proj.2` to `num_tokens` tokens, then `norm` (§2.1)."""
    return {**_linear("proj.0", id_dim, 2 * id_dim), **_linear("proj.2", 2 * id_dim, num_tokens * cross_dim),
            **_layer_norm("norm", cross_dim)}


def _perceiver(dim: int, in_dim: int, out_dim: int) -> Layout:
    """Perceiver resampler without queries (§2.2, §2.3): `proj_in`, `proj_out`, `norm_out` and the blocks.

    Block `l` is `layers.{l}.0` = attention (`norm1` on the inputs, `norm2` on the queries, `to_q`, fused
    `to_kv`, `to_out`, no biases) and `layers.{l}.1` = feed-forward `LayerNorm → Linear → GELU → Linear` (keys
    `1.0`, `1.1`, `1.3`, no biases on the linears).
    """
    if dim % PERCEIVER_DIM_HEAD:
        raise ValueError(f"perceiver width {dim} is not a multiple of the head width {PERCEIVER_DIM_HEAD}; "
                         "diffusers could not derive its number of heads")
    inner = dim  # heads · dim_head with heads = dim // 64
    hidden = PERCEIVER_FF_MULT * dim
    layout = {**_linear("proj_in", in_dim, dim), **_linear("proj_out", dim, out_dim),
              **_layer_norm("norm_out", out_dim)}
    for i in range(PERCEIVER_DEPTH):
        block = {
            **_layer_norm("0.norm1", dim),
            **_layer_norm("0.norm2", dim),
            **_linear("0.to_q", dim, inner, bias=False),
            **_linear("0.to_kv", dim, 2 * inner, bias=False),
            **_linear("0.to_out", inner, dim, bias=False),
            **_layer_norm("1.0", dim),
            **_linear("1.1", dim, hidden, bias=False),
            **_linear("1.3", hidden, dim, bias=False),
        }
        layout.update(_prefixed(f"layers.{i}", block))
    return layout


# --- the UNet's side: read from its Attention modules ---------------------------------------------------------


def _cross_attention_dim(unet) -> int:
    """Width of the tokens the UNet's cross-attention reads: the image projection's output width."""
    widths = {layer.cross_attention_dim for layer in cross_attention_layers(unet)}
    if len(widths) != 1:
        raise ValueError(f"expected one cross-attention width in the UNet, found {sorted(widths) or 'none'}")
    return widths.pop()


def _ip_layers(unet) -> Layout:
    """`{key}.to_k_ip.weight` / `.to_v_ip.weight` per cross-attention layer, key = 2k + 1 (§1.3).

    Each is `Linear(cross_attention_dim, hidden_size, bias=False)`, the shape of the layer's own `to_k` / `to_v`.
    """
    layout = {}
    for layer in cross_attention_layers(unet):
        for name in ("to_k_ip", "to_v_ip"):
            layout.update(_linear(f"{layer.key}.{name}", layer.cross_attention_dim, layer.hidden_size, bias=False))
    return layout


def _lora_layers(unet, rank: int) -> Layout:
    """FaceID's LoRA, `{i}.to_{q,k,v,out}_lora.{down,up}.weight` for every processor (§1.3, §2.1).

    `i` is the processor's index in the **full** `unet.attn_processors` list, self-attention included (diffusers'
    `_load_ip_adapter_loras` numbering). `down` is `[rank, in_features]` and `up` is `[out_features, rank]` of the
    `Linear` it adapts, so `up @ down` has that layer's weight shape.
    """
    if rank == 0:
        return {}
    layout = {}
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        for target, linear in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v),
                               ("to_out", attn.to_out[0])):
            layout.update(_linear(f"{i}.{target}_lora.down", linear.in_features, rank, bias=False))
            layout.update(_linear(f"{i}.{target}_lora.up", rank, linear.out_features, bias=False))
    return layout
