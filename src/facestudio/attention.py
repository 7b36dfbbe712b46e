"""Region-masked decoupled cross-attention, on diffusers' IP-Adapter processors.

FaceStudio's multi-identity cross-attention (arXiv 2312.02663, sec. 3.3) lets the queries of each person's
region attend only to that person's identity tokens. diffusers' `IPAdapterAttnProcessor2_0` already does the
maths when given `ip_adapter_masks`: one adapter, N identities as N images, a separate softmax per image,
each output multiplied by its mask. What it gets wrong for us is the mask resampling: it resizes the mask to
each layer with bicubic interpolation, which rings below 0 at a mask's edge (an identity *subtracted* there).

So facestudio computes each mask at each layer's own resolution (area averaging down, nearest up, clamped
to [0, 1]) and hands the processor a mask of exactly its size, for which diffusers' resize is the identity.
The per-identity strength is folded into the mask, so no scale is ever stored on a processor per call: all
per-call state travels in `cross_attention_kwargs={"ip_adapter_masks": LayerMasks(...)}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from torch import nn


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize `[N, H, W]` masks: area averaging when shrinking, nearest when enlarging, clamped to [0, 1]."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got {list(masks.shape)}")
    if masks.shape[-2:] == (height, width):
        return masks.clamp(0.0, 1.0)
    mode = "area" if height <= masks.shape[-2] and width <= masks.shape[-1] else "nearest-exact"
    return F.interpolate(masks[None].float(), size=(height, width), mode=mode)[0].clamp(0.0, 1.0)


def layer_size(latent_size: tuple[int, int], num_queries: int) -> tuple[int, int]:
    """The `(height, width)` of the UNet layer that has `num_queries` positions.

    Each UNet downsampling is a stride-2 convolution with padding 1, so sizes go `h -> ceil(h / 2)`. The size
    is derived from the known latent size, never guessed from `sqrt(num_queries)`.
    """
    h, w = latent_size
    while h * w > num_queries:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != num_queries:
        raise ValueError(f"no UNet level of a {latent_size[0]}x{latent_size[1]} latent has {num_queries} positions")
    return h, w


@dataclass(frozen=True)
class RegionMasks:
    """Where each image of one adapter acts, and how strongly.

    Attributes:
        masks (`torch.Tensor`): `[N, H, W]` in [0, 1], one per image (identity) of the adapter, at any
            resolution with the output image's aspect ratio.
        strengths (`tuple[float, ...]`): one per image; multiplies its mask.
    """

    masks: torch.Tensor
    strengths: tuple[float, ...]

    def __post_init__(self):
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got {list(self.masks.shape)}")
        if len(self.strengths) != self.masks.shape[0]:
            raise ValueError(f"{self.masks.shape[0]} masks but {len(self.strengths)} strengths")

    @classmethod
    def full(cls, num_images: int, strength: float = 1.0) -> "RegionMasks":
        """Every image acts everywhere with one strength (a single identity, a style image)."""
        return cls(torch.ones(num_images, 1, 1), (float(strength),) * num_images)

    def at(self, height: int, width: int) -> torch.Tensor:
        """`[1, N, height, width]`: the masks at one layer's resolution, times their strengths."""
        strengths = torch.tensor(self.strengths, dtype=torch.float32)[:, None, None]
        return (resize_masks(self.masks, height, width) * strengths)[None]


@dataclass(frozen=True)
class LayerMasks:
    """The per-call `ip_adapter_masks` value: one `RegionMasks` (or None) per loaded adapter.

    An adapter whose entry is None acts everywhere with its processor's fixed scale of 1. The masks for
    each layer size are computed once per call and reused by every layer of that size and every step.
    """

    adapters: tuple[RegionMasks | None, ...]
    latent_size: tuple[int, int]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def for_queries(self, num_queries: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor | None]:
        key = (num_queries, device, dtype)
        if key not in self._cache:  # a race here only computes the same value twice
            h, w = layer_size(self.latent_size, num_queries)
            self._cache[key] = [None if r is None else r.at(h, w).to(device=device, dtype=dtype)
                                for r in self.adapters]
        return self._cache[key]


class RegionIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """`IPAdapterAttnProcessor2_0` that takes `LayerMasks` and picks the masks of its own resolution.

    Same weights and state-dict keys as the diffusers class (it is a subclass and adds none), so adapters
    load and save exactly as diffusers expects.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 scale: float = 1.0, ip_adapter_masks=None):
        if isinstance(ip_adapter_masks, LayerMasks):
            queries = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[2:])
            ip_adapter_masks = ip_adapter_masks.for_queries(queries, hidden_states.device, hidden_states.dtype)
            if all(m is None for m in ip_adapter_masks):
                ip_adapter_masks = None
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale,
                                ip_adapter_masks)


def side_by_side(tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    """`[T_i, D]` token sets made the same length (the lcm of the T_i) by repeating each set whole.

    Each identity is one image of the adapter, with its own softmax over its tokens (`ip_adapter_masks`), so
    the images of one call must have one token count; a FaceID-Portrait identity has 16 per photo, and people
    may come with different numbers of photos. Repeating every key/value pair of a set k times multiplies
    each term of its softmax's numerator and denominator by k: the attention output is unchanged (up to
    rounding). Sets of equal length are returned as they are.
    """
    lengths = {t.shape[0] for t in tokens}
    if len(lengths) == 1:
        return list(tokens)
    common = math.lcm(*lengths)
    return [t.repeat(common // t.shape[0], 1) for t in tokens]


class TokenPassthrough(nn.Module):
    """Stands in for the UNet's `encoder_hid_proj`, so identities are projected once per call, not per step.

    diffusers' UNet calls `encoder_hid_proj(added_cond_kwargs["image_embeds"])` at every step; with this in
    its place, `image_embeds` is the list of ready token tensors `[B, N, T, D]`, one per adapter. It keeps the
    real projections as `projection` (a `MultiIPAdapterImageProjection`), so they move with the UNet and go
    away with diffusers' `unload_ip_adapter`.
    """

    def __init__(self, projection: nn.Module):
        super().__init__()
        self.projection = projection

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        return tokens


def install_region_processors(unet) -> int:
    """Swap every `IPAdapterAttnProcessor2_0` of `unet` for a `RegionIPAdapterAttnProcessor` sharing its weights.

    The processors' scales are set to 1: strengths come from the masks of each call. Returns how many were
    swapped.
    """
    processors, swapped = {}, 0
    for name, proc in unet.attn_processors.items():
        if isinstance(proc, IPAdapterAttnProcessor2_0) and not isinstance(proc, RegionIPAdapterAttnProcessor):
            new = RegionIPAdapterAttnProcessor(proc.hidden_size, proc.cross_attention_dim, proc.num_tokens, 1.0)
            new.to_k_ip, new.to_v_ip = proc.to_k_ip, proc.to_v_ip
            proc = new
            swapped += 1
        elif isinstance(proc, RegionIPAdapterAttnProcessor):
            proc.scale = [1.0] * len(proc.num_tokens)
        processors[name] = proc
    unet.set_attn_processor(processors)
    return swapped
