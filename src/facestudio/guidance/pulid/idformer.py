"""PuLID's ID encoders: the v1 MLP encoder and the v1.1 / FLUX ID former, with the published parameter names.

Both read `id_cond` (`[B, 1280]` per photo: the raw antelopev2 embedding, 512, then the unit-length EVA-CLIP
embedding, 768) and five EVA-CLIP hidden states (`[B, 577, 1024]` each, class token first) and give ID tokens
of the UNet's (or FLUX's) token width, 2048.

* **v1** (`MLPIDEncoder`, `pulid_v1.bin`): an MLP turns `id_cond` into 5 tokens; each hidden state gives one
  more token, its class token through `mapping_i` plus the mean over patches of `mapping_patch_i`: 10 tokens.
* **v1.1 and FLUX** (`IDFormer`, `pulid_v1.1.safetensors`, `pulid_flux_v0.9.*.safetensors`): a perceiver
  (Jaegle et al. 2021; PuLID v1.1 report) whose 32 learnt queries, with the 5 tokens `id_cond` maps to
  appended, attend to those 5 tokens plus one mapped hidden state, two layers per hidden state; the 32 query
  outputs times `proj_out` are the ID tokens. Several photos of one person enter together: each photo's 5
  tokens and every photo's patches side by side (the reference's `num_duotu`).

Module and parameter names are the checkpoints' own (after their `id_adapter.` / `pulid_encoder.` prefix),
so a checked state dict loads one to one (`checkpoints.py`); the sizes come from the config dataclasses,
whose defaults are the published ones (tiny ones for tests are built in code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> LeakyReLU, twice, then Linear (keys `0, 1, 3, 4, 6`)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
        nn.Linear(hidden, out_dim),
    )


@dataclass(frozen=True)
class MLPEncoderConfig:
    """Sizes of the v1 encoder (defaults: `pulid_v1.bin`).

    Attributes:
        id_dim (`int`): width of `id_cond` (512 ArcFace + 768 EVA-CLIP).
        vit_dim (`int`): width of the EVA-CLIP hidden states.
        hidden_dim (`int`): the MLPs' hidden width (the body's is capped at it).
        context_dim (`int`): width of the ID tokens (the UNet's cross-attention width).
        num_tokens (`int`): tokens made from `id_cond`.
        num_vit_layers (`int`): hidden states read, one token each.
    """

    id_dim: int = 1280
    vit_dim: int = 1024
    hidden_dim: int = 1024
    context_dim: int = 2048
    num_tokens: int = 5
    num_vit_layers: int = 5

    @property
    def tokens_per_photo(self) -> int:
        return self.num_tokens + self.num_vit_layers


class MLPIDEncoder(nn.Module):
    """PuLID v1's ID encoder: `id_cond` and the hidden states of one photo -> `[B, 10, 2048]` tokens."""

    def __init__(self, config: MLPEncoderConfig = MLPEncoderConfig()):
        super().__init__()
        self.config = c = config
        wide = c.context_dim * c.num_tokens
        h1, h2 = min(wide // 4, c.hidden_dim), min(wide // 2, c.hidden_dim)
        self.body = nn.Sequential(
            nn.Linear(c.id_dim, h1), nn.LayerNorm(h1), nn.LeakyReLU(),
            nn.Linear(h1, h2), nn.LayerNorm(h2), nn.LeakyReLU(),
            nn.Linear(h2, wide),
        )
        for i in range(c.num_vit_layers):
            # class token and patches of hidden state i, each through its own MLP
            self.add_module(f"mapping_{i}", _mlp(c.vit_dim, c.hidden_dim, c.context_dim))
            self.add_module(f"mapping_patch_{i}", _mlp(c.vit_dim, c.hidden_dim, c.context_dim))

    def forward(self, id_cond: torch.Tensor, vit_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            id_cond (`torch.Tensor`): `[B, id_dim]`.
            vit_hidden (`Sequence[torch.Tensor]`): `num_vit_layers` tensors `[B, 1 + patches, vit_dim]`.

        Returns:
            `[B, num_tokens + num_vit_layers, context_dim]`.
        """
        c = self.config
        _check_hidden(vit_hidden, c.num_vit_layers)
        tokens = [self.body(id_cond).reshape(id_cond.shape[0], c.num_tokens, c.context_dim)]
        for i, hidden in enumerate(vit_hidden):
            cls = getattr(self, f"mapping_{i}")(hidden[:, :1])
            patches = getattr(self, f"mapping_patch_{i}")(hidden[:, 1:]).mean(dim=1, keepdim=True)
            tokens.append(cls + patches)
        return torch.cat(tokens, dim=1)


@dataclass(frozen=True)
class IDFormerConfig:
    """Sizes of the v1.1 / FLUX ID former (defaults: `pulid_v1.1.safetensors` and `pulid_flux_v0.9.*`).

    Attributes:
        id_dim, vit_dim, hidden_dim (`int`): as in `MLPEncoderConfig`.
        dim (`int`): width of the queries.
        depth (`int`): perceiver layers, `depth / num_vit_layers` per hidden state.
        dim_head, heads (`int`): attention heads.
        num_id_tokens (`int`): tokens `id_cond` becomes (per photo).
        num_queries (`int`): learnt queries, hence ID tokens.
        output_dim (`int`): width of the ID tokens.
        ff_mult (`int`): feed-forward expansion.
        num_vit_layers (`int`): hidden states read.
    """

    id_dim: int = 1280
    vit_dim: int = 1024
    hidden_dim: int = 1024
    dim: int = 1024
    depth: int = 10
    dim_head: int = 64
    heads: int = 16
    num_id_tokens: int = 5
    num_queries: int = 32
    output_dim: int = 2048
    ff_mult: int = 4
    num_vit_layers: int = 5

    def __post_init__(self):
        if self.depth % self.num_vit_layers:
            raise ValueError(f"IDFormer depth {self.depth} is not a multiple of its {self.num_vit_layers} "
                             "hidden states")

    @property
    def tokens_per_photo(self) -> int:
        return self.num_queries


class PerceiverAttention(nn.Module):
    """Queries (`latents`) attending to the context and to themselves (IP-Adapter Plus' perceiver layer).

    Attributes as in the checkpoints: `norm1` (context), `norm2` (queries), `to_q`, `to_kv`, `to_out`.
    """

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.norm1(context), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((context, latents), dim=1)).chunk(2, dim=-1)
        b, n, _ = q.shape
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        # softmax(q k^T / sqrt(d)) v; SDPA accumulates in float32 where the reference casts its softmax to it
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, bias-free (keys `0, 1, 3`)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class IDFormer(nn.Module):
    """PuLID v1.1's and PuLID-FLUX's ID former: the photos of one person -> `[B, 32, 2048]` ID tokens."""

    def __init__(self, config: IDFormerConfig = IDFormerConfig()):
        super().__init__()
        self.config = c = config
        scale = c.dim ** -0.5
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) * scale)
        self.proj_out = nn.Parameter(torch.randn(c.dim, c.output_dim) * scale)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), _feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth)
        )
        for i in range(c.num_vit_layers):
            self.add_module(f"mapping_{i}", _mlp(c.vit_dim, c.hidden_dim, c.dim))
        self.id_embedding_mapping = _mlp(c.id_dim, c.hidden_dim, c.dim * c.num_id_tokens)

    def forward(self, id_cond: torch.Tensor, vit_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            id_cond (`torch.Tensor`): `[B, id_dim]` for one photo, `[B, N, id_dim]` for N photos.
            vit_hidden (`Sequence[torch.Tensor]`): `num_vit_layers` tensors `[B, N * (1 + patches), vit_dim]`,
                the N photos' hidden states side by side.

        Returns:
            `[B, num_queries, output_dim]`.
        """
        c = self.config
        _check_hidden(vit_hidden, c.num_vit_layers)
        batch = id_cond.shape[0]
        photos = id_cond.shape[1] if id_cond.ndim == 3 else 1
        id_tokens = self.id_embedding_mapping(id_cond).reshape(batch, c.num_id_tokens * photos, c.dim)
        latents = torch.cat((self.latents.expand(batch, -1, -1), id_tokens), dim=1)
        per_level = c.depth // c.num_vit_layers
        for i, hidden in enumerate(vit_hidden):
            context = torch.cat((id_tokens, getattr(self, f"mapping_{i}")(hidden)), dim=1)
            for attention, feed_forward in self.layers[i * per_level:(i + 1) * per_level]:
                latents = latents + attention(context, latents)
                latents = latents + feed_forward(latents)
        return latents[:, :c.num_queries] @ self.proj_out


def _check_hidden(vit_hidden: Sequence[torch.Tensor], expected: int) -> None:
    if len(vit_hidden) != expected:
        raise ValueError(f"the ID encoder reads {expected} EVA-CLIP hidden states, got {len(vit_hidden)}")


#: An encoder config of either kind.
EncoderConfig = MLPEncoderConfig | IDFormerConfig


def build_id_encoder(config: EncoderConfig) -> nn.Module:
    """The encoder module for a config (random weights; `checkpoints.load_id_encoder` fills them)."""
    return MLPIDEncoder(config) if isinstance(config, MLPEncoderConfig) else IDFormer(config)


__all__ = ["EncoderConfig", "IDFormer", "IDFormerConfig", "MLPEncoderConfig", "MLPIDEncoder", "build_id_encoder"]
