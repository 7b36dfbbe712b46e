"""PuLID's ID attention inside the SDXL UNet's cross-attention layers, gated per person by region masks.

PuLID (Guo et al. 2024, arXiv 2404.16022, sec. 3.1) adds to every cross-attention layer a second attention
over the ID tokens, with its own key/value projections (`id_to_k`, `id_to_v`: `Linear(2048, inner, bias=False)`),
added to the text attention *before* the output projection, times `id_scale`. Its published demos add two
variants (ToTheBeginning/PuLID `pulid/attention_processor.py`):

* `num_zero`: that many all-zero ID tokens appended; with bias-free projections their keys and values are 0,
  so they only dilute the softmax (less identity, more editability);
* `ortho`: only the part of the ID attention orthogonal to the text attention is added, the projection taken
  over the layer's positions per channel (`"v1"`), or (`"v2"`) that projection scaled by how much the
  queries attend to the first five ID tokens.

Here each person is one "image" of the adapter, as on the IP-Adapter path (`attention.py`): a separate
softmax per person, the contribution multiplied by the person's mask at the layer's own resolution (times
their strength, folded into the mask by `RegionMasks`), so it is exactly 0.0 where the mask is 0. With
`ortho`, the projection is taken over the person's region (weighted by the mask): with one person and the
whole image as region, that is the reference's projection. The processor subclasses facestudio's
`RegionIPAdapterAttnProcessor`, so it takes the same per-call `LayerMasks`, its weights live where diffusers
keeps an IP-Adapter's (`to_k_ip.0` / `to_v_ip.0`), and diffusers' `unload_ip_adapter` removes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...attention import LayerMasks, RegionIPAdapterAttnProcessor

#: The `ortho` variants of the reference: off, `ORTHO`, `ORTHO_v2`.
ORTHO_VARIANTS = ("off", "v1", "v2")
#: ORTHO_v2 weighs the projection by the attention on this many leading ID tokens (the reference's `[:, :, :5]`).
V2_LEADING_TOKENS = 5


def orthogonal_part(text: torch.Tensor, identity: torch.Tensor, weight: torch.Tensor,
                    attention_on_leading: torch.Tensor | None = None) -> torch.Tensor:
    """The ID attention output with its projection onto the text attention output removed (PuLID's `ORTHO`).

    Args:
        text, identity (`torch.Tensor`): `[B, L, C]` attention outputs before the output projection.
        weight (`torch.Tensor`): `[1 or B, L, 1]` non-negative weights of the positions (the person's mask); the
            projection coefficient per channel is `Σ w t x / Σ w t t` over positions (the reference: w = 1).
        attention_on_leading (`torch.Tensor`, *optional*): `[B, L, 1]`; given, ORTHO_v2:
            `x + (a - 1) * projection` instead of `x - projection`.

    Returns:
        `torch.Tensor` `[B, L, C]` in float32.
    """
    t, x, w = text.float(), identity.float(), weight.float()
    numerator = (w * t * x).sum(dim=-2, keepdim=True)
    denominator = (w * t * t).sum(dim=-2, keepdim=True)
    # a channel that is 0 over the whole region has nothing to project onto (and 0/0 must not poison the sum)
    coefficient = torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny),
                              torch.zeros_like(numerator))
    projection = coefficient * t
    if attention_on_leading is None:
        return x - projection
    return x + (attention_on_leading.float() - 1) * projection


def identity_contribution(text: torch.Tensor, identity: torch.Tensor, weight: torch.Tensor, ortho: str,
                          attention_on_leading: torch.Tensor | None = None) -> torch.Tensor:
    """What one person adds to the text attention output: `weight * x`, or `weight *` its orthogonal part.

    `weight` is `[1 or B, L, 1]` (mask times strength); where it is 0 the result is exactly 0.
    """
    if ortho == "off":
        return weight.to(identity.dtype) * identity
    part = orthogonal_part(text, identity, weight, attention_on_leading if ortho == "v2" else None)
    return (weight.float() * part).to(text.dtype)


class PuLIDAttnProcessor(RegionIPAdapterAttnProcessor):
    """Cross-attention with PuLID's ID attention for each person of the call.

    Inputs, per call: `encoder_hidden_states = (text, [id_tokens])`, `id_tokens` `[B, N, T, D]` for N people
    (the UNet builds the tuple from `added_cond_kwargs["image_embeds"]`), and `ip_adapter_masks`, the call's
    `LayerMasks` (one `RegionMasks` for the N people, strengths folded in); no masks: every person everywhere at
    strength 1. `ortho` is the loaded adapter's mode, fixed at load like the weights.

    Args:
        hidden_size (`int`): the layer's inner width (`to_k`'s output).
        cross_attention_dim (`int`): the ID tokens' width (2048 in the published checkpoints).
        ortho (`str`): `"off"`, `"v1"` or `"v2"` (`ORTHO_VARIANTS`).
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, ortho: str = "off"):
        if ortho not in ORTHO_VARIANTS:
            raise ValueError(f"ortho must be one of {ORTHO_VARIANTS}, got {ortho!r}")
        super().__init__(hidden_size, cross_attention_dim, num_tokens=(1,), scale=1.0)
        self.ortho = ortho

    @property
    def id_to_k(self) -> torch.nn.Linear:
        return self.to_k_ip[0]

    @property
    def id_to_v(self) -> torch.nn.Linear:
        return self.to_v_ip[0]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 scale: float = 1.0, ip_adapter_masks=None):
        id_tokens = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, (id_tokens,) = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, positions, _ = hidden_states.shape
        if attention_mask is not None:
            length = positions if encoder_hidden_states is None else encoder_hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        heads = lambda t: t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        merge = lambda t: t.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)  # noqa: E731
        query = heads(query)
        text = merge(F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=attention_mask))

        hidden_states = text
        if id_tokens is not None:
            weights = self._person_weights(ip_adapter_masks, positions, id_tokens.shape[1], query)
            for person, weight in enumerate(weights):
                if weight is None:
                    continue
                tokens = id_tokens[:, person]
                id_key = heads(self.id_to_k(tokens).to(query.dtype))
                id_value = heads(self.id_to_v(tokens).to(query.dtype))
                identity = merge(F.scaled_dot_product_attention(query, id_key, id_value))
                leading = None
                if self.ortho == "v2":  # the reference's unscaled logits, averaged over heads
                    logits = query.float() @ id_key.float().transpose(-2, -1)
                    leading = logits.softmax(-1).mean(1)[:, :, :V2_LEADING_TOKENS].sum(-1, keepdim=True)
                hidden_states = hidden_states + identity_contribution(text, identity, weight, self.ortho, leading)

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _person_weights(masks, positions: int, people: int, like: torch.Tensor) -> list[torch.Tensor | None]:
        """`[1, L, 1]` weight (mask times strength) of each person at this layer; None for one that is off."""
        if isinstance(masks, LayerMasks):
            (layer,) = masks.for_queries(positions, like.device, torch.float32)
            if layer is not None:
                if layer.shape[1] != people:
                    raise ValueError(f"{layer.shape[1]} region masks for {people} PuLID identities")
                flat = layer.reshape(1, people, positions)
                return [None if not torch.any(flat[:, i]) else flat[:, i, :, None] for i in range(people)]
        elif masks is not None:
            raise TypeError(f"PuLID attention takes LayerMasks as ip_adapter_masks, got {type(masks).__name__}")
        return [torch.ones(1, positions, 1, device=like.device)] * people


def cross_attention_processors(unet) -> list[tuple[int, str, object]]:
    """`(index, processor name, Attention)` of each cross-attention layer; `index` is the processor's position
    in the UNet's full processor list, self-attention included (the `id_adapter_attn_layers.{index}` numbering of the
    published checkpoints, which index `nn.ModuleList(unet.attn_processors.values())`)."""
    found = []
    for index, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            found.append((index, name, attn))
    return found


def install_pulid_processors(unet, weights: dict[int, tuple[torch.Tensor, torch.Tensor]], ortho: str) -> None:
    """Put a `PuLIDAttnProcessor` on every cross-attention layer with its `(id_to_k, id_to_v)` weights (by
    `cross_attention_processors` index; shapes checked by the caller); the self-attention processors stay."""
    processors = dict(unet.attn_processors)
    param = next(unet.parameters())
    for index, name, attn in cross_attention_processors(unet):
        k, v = weights[index]
        proc = PuLIDAttnProcessor(attn.to_k.out_features, k.shape[1], ortho)
        with torch.no_grad():
            proc.id_to_k.weight.copy_(k)
            proc.id_to_v.weight.copy_(v)
        processors[name] = proc.to(param.device, param.dtype)
    unet.set_attn_processor(processors)


def zero_padded(tokens: torch.Tensor, num_zero: int) -> torch.Tensor:
    """`[T, D]` ID tokens with `num_zero` zero tokens appended (the reference's `NUM_ZERO`)."""
    if num_zero <= 0:
        return tokens
    return torch.cat([tokens, tokens.new_zeros(num_zero, tokens.shape[-1])])


__all__ = ["ORTHO_VARIANTS", "PuLIDAttnProcessor", "cross_attention_processors", "identity_contribution",
           "install_pulid_processors", "orthogonal_part", "zero_padded"]
