"""PuLID-FLUX's identity cross-attention inside diffusers' `FluxTransformer2DModel` (PuLID, Guo et al. 2024,
FLUX release v0.9.1), gated per person by region.

As in Flamingo, a perceiver cross-attention after every `double_interval`-th double-stream block and every
`single_interval`-th single-stream block lets the image tokens (queries) read one person's ID tokens (keys and
values, 32 x 2048 from PuLID's ID encoder) and adds its output to the image tokens only; the text tokens pass
unchanged. PuLID adds `w * CA_k(id, img)`; facestudio adds every person's term gated by that person's region
mask at the image-token resolution (the 2x2-packed latent) times their strength:

    img <- img + sum_p (s_p * m_p) * CA_k(id_p, img)

so where `m_p` is 0 nothing of person p is added (0 * a finite number is exactly 0).

The modules are installed as forward hooks on diffusers' own blocks (no copy of the transformer); the
per-call state (tokens, masks, strengths) arrives in `joint_attention_kwargs[IDENTITY_KEY]`, and the
attention processors are swapped for `IdentityFluxAttnProcessor`, which names that key so diffusers does not
warn about it in every layer at every step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from torch import nn

#: The `joint_attention_kwargs` entry that carries a call's `FluxIdentityCall`.
IDENTITY_KEY = "identity"
#: The attribute of the transformer that holds the installed `IdentityCrossAttentions` (they move with it).
ATTRIBUTE = "pulid_flux"


class IdentityCrossAttention(nn.Module):
    """One PuLID-FLUX cross-attention: image tokens `[B, L, dim]` attend to ID tokens `[B, T, id_dim]`.

    Layer norms on both inputs, queries from the image tokens, keys and values from the ID tokens, no biases
    (the `pulid_ca.N.*` layout: `norm1` on the ID tokens, `norm2` on the image tokens, `to_q`, `to_kv`, `to_out`).
    """

    def __init__(self, dim: int, id_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(id_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(id_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, id_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        b, length, _ = image_tokens.shape
        q = self.to_q(self.norm2(image_tokens))
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        q, k, v = (x.view(b, -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v, as PuLID's
        return self.to_out(out.transpose(1, 2).reshape(b, length, -1))


def insertion_points(num_layers: int, num_single_layers: int, double_interval: int = 2,
                     single_interval: int = 4) -> list[tuple[str, int]]:
    """`[(blocks, index), ...]` in module order: after double block i when `i % double_interval == 0`, after
    single block j when `j % single_interval == 0` (FLUX.1's 19 + 38 blocks give 10 + 10 = 20)."""
    return ([("transformer_blocks", i) for i in range(0, num_layers, double_interval)]
            + [("single_transformer_blocks", j) for j in range(0, num_single_layers, single_interval)])


class IdentityCrossAttentions(ModelMixin, ConfigMixin):
    """The cross-attentions of one transformer, as `pulid_ca.N` (the published checkpoint's key names).

    Args:
        dim (`int`): the transformer's hidden size (`num_attention_heads * attention_head_dim`; 3072 in FLUX.1).
        num_layers, num_single_layers (`int`): its double- and single-stream blocks (19 and 38).
        id_dim (`int`, defaults to 2048): width of an ID token.
        heads, head_dim (`int`, default 16 and 128): of the cross-attention.
        double_interval, single_interval (`int`, default 2 and 4): where modules sit (`insertion_points`).
    """

    @register_to_config
    def __init__(self, dim: int = 3072, num_layers: int = 19, num_single_layers: int = 38, id_dim: int = 2048,
                 heads: int = 16, head_dim: int = 128, double_interval: int = 2, single_interval: int = 4):
        super().__init__()
        count = len(insertion_points(num_layers, num_single_layers, double_interval, single_interval))
        self.pulid_ca = nn.ModuleList([IdentityCrossAttention(dim, id_dim, heads, head_dim) for _ in range(count)])

    @classmethod
    def for_transformer(cls, transformer, **kwargs) -> IdentityCrossAttentions:
        config = transformer.config
        return cls(dim=config.num_attention_heads * config.attention_head_dim, num_layers=config.num_layers,
                   num_single_layers=config.num_single_layers, **kwargs)

    def points(self) -> list[tuple[str, int]]:
        c = self.config
        return insertion_points(c.num_layers, c.num_single_layers, c.double_interval, c.single_interval)


@dataclass(frozen=True)
class FluxIdentityCall:
    """What one transformer call adds: per person, its ID tokens and its gate.

    Attributes:
        tokens (`tuple[torch.Tensor]`): per person `[B, T, id_dim]` (each row of the batch its own: the
            person's tokens, or "no identity" in a row guided without it).
        gates (`torch.Tensor`): `[N, L]`, person n's region mask at the image-token resolution times its
            strength (`L` = image tokens, in the packed latents' row-major order).
    """

    tokens: tuple[torch.Tensor, ...]
    gates: torch.Tensor

    def __post_init__(self):
        if self.gates.ndim != 2 or self.gates.shape[0] != len(self.tokens):
            raise ValueError(f"gates must be [{len(self.tokens)}, L] (one per person), got {list(self.gates.shape)}")

    def add(self, module: IdentityCrossAttention, image_tokens: torch.Tensor) -> torch.Tensor:
        """`image_tokens + sum_n gates[n] * module(tokens[n], image_tokens)`; a person whose gate is 0 everywhere
        is skipped (an image with every strength 0 is the base model's, exactly)."""
        if image_tokens.shape[1] != self.gates.shape[1]:
            raise ValueError(f"the call's gates cover {self.gates.shape[1]} image tokens; the transformer has "
                             f"{image_tokens.shape[1]}")
        gates = self.gates.to(image_tokens.device, image_tokens.dtype)
        out = image_tokens
        for tokens, gate in zip(self.tokens, gates):
            if bool(gate.any()):
                term = module(tokens.to(image_tokens.device, image_tokens.dtype), image_tokens)
                out = out + gate[None, :, None] * term
        return out


class IdentityFluxAttnProcessor(FluxAttnProcessor):
    """diffusers' `FluxAttnProcessor`, naming the identity entry of `joint_attention_kwargs` (which the block
    hooks read) so that diffusers passes it on quietly; the attention itself is unchanged."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 identity: FluxIdentityCall | None = None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def _after_block(block, args, kwargs, output, *, modules: IdentityCrossAttentions, index: int):
    # the transformer passes joint_attention_kwargs by keyword; its gradient-checkpointing path, fifth positionally
    joint = kwargs.get("joint_attention_kwargs", args[4] if len(args) > 4 else None) or {}
    call = joint.get(IDENTITY_KEY)
    if call is None:
        return output
    text, image = output
    return text, call.add(modules.pulid_ca[index], image)


def install(transformer, modules: IdentityCrossAttentions) -> None:
    """Put `modules` into `transformer`: held as `transformer.pulid_flux` (so `.to()` and offloading move them),
    a forward hook after each insertion point, identity-aware processors. Replaces an earlier install."""
    uninstall(transformer)
    expected = IdentityCrossAttentions.for_transformer(transformer, id_dim=modules.config.id_dim).config
    for key in ("dim", "num_layers", "num_single_layers"):
        if modules.config[key] != expected[key]:
            raise ValueError(f"identity cross-attentions made for {key}={modules.config[key]}; this transformer has "
                             f"{expected[key]}")
    param = next(transformer.parameters())
    # nn.Module's own move (ModelMixin.to warns about fp32-kept modules, of which these have none)
    nn.Module.to(modules, param.device, param.dtype)
    setattr(transformer, ATTRIBUTE, modules)
    handles = []
    for index, (blocks, i) in enumerate(modules.points()):
        hook = functools.partial(_after_block, modules=modules, index=index)
        handles.append(getattr(transformer, blocks)[i].register_forward_hook(hook, with_kwargs=True))
    modules._facestudio_hooks = handles  # load-time state, removed by uninstall
    transformer.set_attn_processor(IdentityFluxAttnProcessor())


def uninstall(transformer) -> None:
    """Remove installed identity cross-attentions: the stock transformer again."""
    modules = getattr(transformer, ATTRIBUTE, None)
    if modules is None:
        return
    for handle in getattr(modules, "_facestudio_hooks", ()):
        handle.remove()
    delattr(transformer, ATTRIBUTE)
    transformer.set_attn_processor(FluxAttnProcessor())


def token_grid(height: int, width: int, vae_scale_factor: int = 8) -> tuple[int, int]:
    """`(rows, columns)` of FLUX's image tokens for an image: the latent (1/8) in 2x2 patches."""
    return height // (2 * vae_scale_factor), width // (2 * vae_scale_factor)


def token_count(height: int, width: int, vae_scale_factor: int = 8) -> int:
    return math.prod(token_grid(height, width, vae_scale_factor))
