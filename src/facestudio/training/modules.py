"""The trainable guidance module inside a frozen base UNet, and the batched inputs it takes while training.

Training uses the very modules inference uses: the adapters are loaded into a `FaceStudioPipeline` with
`load_adapters`, so the projections live in `unet.encoder_hid_proj.projection` and the key/value layers in
the `RegionIPAdapterAttnProcessor`s; `GuidanceModules` only gathers them so that the optimiser and
accelerate see exactly the trainable parameters and nothing of the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attention import LayerMasks, resize_masks
from ..guidance.identity import batched_faceid_plus_tokens


class GuidanceModules(nn.Module):
    """The projections and the IP key/value layers of every loaded adapter, as one trainable module.

    Args:
        unet (`UNet2DConditionModel`): a UNet with facestudio adapters loaded (`load_adapters`).
        adapters (`tuple`): the pipeline's `facestudio_adapters` (kind, config and index of each).
    """

    def __init__(self, unet, adapters):
        super().__init__()
        self.projections = unet.encoder_hid_proj.projection.image_projection_layers
        self.ip_layers = nn.ModuleList(p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip"))
        self.adapters = tuple(adapters)

    def freeze_base(self, *frozen: nn.Module) -> None:
        """Every parameter of `frozen` stops learning, then the guidance parameters learn again."""
        for module in frozen:
            module.requires_grad_(False)
        self.requires_grad_(True)

    def tokens(self, batch: dict, style_embeds: torch.Tensor | None) -> list[torch.Tensor]:
        """One `[B, N, T, D]` token tensor per adapter, in the pipeline's adapter order."""
        out = []
        for adapter in self.adapters:
            projection = self.projections[adapter.index]
            if adapter.kind == "identity":
                out.append(batched_identity_tokens(projection, batch["id_embeddings"], batch["id_detail"],
                                                   adapter.config))
            else:
                out.append(projection(style_embeds)[:, None])
        return out

    def forward(self, batch: dict, style_embeds: torch.Tensor | None) -> list[torch.Tensor]:
        return self.tokens(batch, style_embeds)


def batched_identity_tokens(projection, embeddings: torch.Tensor, detail: torch.Tensor, config) -> torch.Tensor:
    """`[B, N, T, D]` tokens of `[B, N, 128]` embeddings and `[B, N, L, C]` detail tokens, with gradients
    (inference's `guidance.identity.batched_faceid_plus_tokens`, one row per identity slot)."""
    b, n = embeddings.shape[:2]
    tokens = batched_faceid_plus_tokens(projection, embeddings.reshape(b * n, -1),
                                        detail.reshape(b * n, *detail.shape[2:]), config.shortcut,
                                        config.shortcut_scale)
    return tokens.reshape(b, n, *tokens.shape[1:])


@dataclass(frozen=True)
class BatchRegionMasks:
    """Per-example region masks `[B, N, H, W]` (inference uses one set for the whole batch: `RegionMasks`).

    Shaped for `LayerMasks`, which asks each adapter's masks for `at(height, width)` at every layer size.
    """

    masks: torch.Tensor

    def at(self, height: int, width: int) -> torch.Tensor:
        b, n = self.masks.shape[:2]
        resized = resize_masks(self.masks.reshape(b * n, *self.masks.shape[2:]).float(), height, width)
        return resized.reshape(b, n, height, width)


def layer_masks(adapters, id_masks: torch.Tensor, latent_size: tuple[int, int]) -> LayerMasks:
    """The `ip_adapter_masks` of a training batch: identities in their regions, the style image everywhere
    (None: `LayerMasks` lets it act everywhere at scale 1)."""
    return LayerMasks(tuple(BatchRegionMasks(id_masks) if adapter.kind == "identity" else None
                            for adapter in adapters), latent_size)
