"""Style guidance: a style or scene image -> M style tokens (FaceStudio's hybrid guidance, sec. 3.2).

The image goes through a CLIP vision model (loaded like the base model: a local folder or a hub id; a tiny
one built in code for tests) and diffusers' `ImageProjection` (the public IP-Adapter layout, 4 tokens). It is
loaded as a second adapter beside the identity adapter, with its own strength.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import ImageProjection
from PIL import Image

from ..downloads import split_hub_path
from ..errors import ModelFileError, first_line
from .layout import AdapterConfig, init_ip_layers

#: diffusers' loader gives the plain IP-Adapter layout ("proj.weight") exactly 4 tokens.
NUM_TOKENS = 4


@dataclass(frozen=True)
class StyleAdapterConfig(AdapterConfig):
    """What `facestudio_adapter.json` records for a style adapter."""

    image_encoder: str = "tiny"
    image_embed_dim: int = 1024
    cross_attention_dim: int = 768
    kind: str = "style"
    projection: str = "ip-adapter"
    # where style acts, as diffusers' `set_ip_adapter_scale` takes it (InstantStyle, SDXL:
    # {"up": {"block_0": [0.0, 1.0, 0.0]}}); None: every layer at 1
    block_scales: dict | None = None

    @property
    def kind_name(self) -> str:
        return self.projection  # "ip-adapter": guidance/kinds/own.py


def new_style_adapter(unet, config: StyleAdapterConfig, seed: int = 0) -> dict:
    """An untrained style adapter for `unet` as the checkpoint dict `load_ip_adapter` takes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = ImageProjection(config.image_embed_dim, config.cross_attention_dim, NUM_TOKENS)
    return {"image_proj": projection_to_checkpoint(projection), "ip_adapter": init_ip_layers(unet)}


def projection_to_checkpoint(projection: ImageProjection) -> dict[str, torch.Tensor]:
    """The projection's weights in the original key names: diffusers' `image_embeds` Linear is `proj`."""
    state = {k: v.detach().float().cpu() for k, v in projection.state_dict().items()}
    return {"proj.weight": state["image_embeds.weight"], "proj.bias": state["image_embeds.bias"],
            "norm.weight": state["norm.weight"], "norm.bias": state["norm.bias"]}


class StyleEncoder:
    """A CLIP vision model and its image processor: image -> projected image embedding.

    Args:
        model (`transformers.CLIPVisionModelWithProjection`): the encoder.
        processor (`transformers.CLIPImageProcessor`): resizing and normalisation for it.
    """

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @classmethod
    def for_model(cls, model) -> "StyleEncoder":
        """The encoder with CLIP's standard processing at the model's own image size (IP-Adapter's encoder
        folders ship no processor config; a pipeline reloaded with `from_pretrained` has only the model)."""
        from transformers import CLIPImageProcessor

        size = model.config.image_size
        return cls(model, CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}))

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        """`[projection_dim]` embedding of one RGB image."""
        return self.embeds([image])[0]

    @torch.no_grad()
    def embeds(self, images) -> torch.Tensor:
        """`[N, projection_dim]` embeddings of RGB images (PIL images or `uint8` arrays), in the model's dtype."""
        param = next(self.model.parameters())
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values.to(param.device, param.dtype)
        return self.model(pixels).image_embeds

    @torch.no_grad()
    def hidden_states(self, images) -> torch.Tensor:
        """`[N, L, C]` penultimate-layer hidden states of RGB images: what IP-Adapter Plus, Plus-Face,
        Full-Face and FaceID-Plus read."""
        param = next(self.model.parameters())
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values.to(param.device, param.dtype)
        return self.model(pixels, output_hidden_states=True).hidden_states[-2]

    @torch.no_grad()
    def blank_hidden_states(self) -> torch.Tensor:
        """`[1, L, C]` hidden states of the all-zero (after normalisation) image: IP-Adapter's "no image" for
        the branches that read hidden states."""
        param = next(self.model.parameters())
        size = self.model.config.image_size
        pixels = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
        return self.model(pixels, output_hidden_states=True).hidden_states[-2]


def tiny_style_encoder(seed: int = 0) -> StyleEncoder:
    """A CLIP vision model with a tiny config, built in code (tests and offline smoke runs)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config).eval()
    return StyleEncoder.for_model(model)


def load_style_encoder(name: str, *, local_files_only: bool | None = None) -> StyleEncoder:
    """`"tiny"`, a local folder or a hub id with a CLIP vision model (this may download).

    A hub id may name a folder inside its repository: `"h94/IP-Adapter/models/image_encoder"`. A repository
    without an image processor config (IP-Adapter's) gets CLIP's standard 224 px processing.
    """
    if name == "tiny":
        return tiny_style_encoder()
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    repo, subfolder = split_hub_path(name)
    options = dict(local_files_only=local_files_only, subfolder=subfolder or "")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(repo, **options).eval()
        try:
            return StyleEncoder(model, CLIPImageProcessor.from_pretrained(repo, **options))
        except OSError:
            return StyleEncoder.for_model(model)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"image encoder {name!r}: could not be loaded ({first_line(e)}); pass a "
                             "local folder with a CLIP vision model or check the name and your connection") from None


def acting_layers(unet, block_scales: dict) -> list[str]:
    """The cross-attention layers of `unet` that per-block scales leave switched on (scale not 0).

    Block names differ between architectures (SD 1.5's `up_blocks.0` has no attention, SDXL's does), so a
    block-scale dict written for one UNet can switch an adapter off everywhere in another.
    """
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

    (expanded,) = _maybe_expand_lora_scales(unet, [block_scales], default_scale=0.0)
    names = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    return [name for name in names
            if any(name.startswith(prefix) and value != 0 for prefix, value in expanded.items())]


def style_tokens(projection: ImageProjection, embedding: torch.Tensor) -> torch.Tensor:
    """The `[NUM_TOKENS, D]` tokens of one image embedding (zeros give the "no style" tokens)."""
    param = next(projection.parameters())
    return projection(embedding.reshape(1, -1).to(param.device, param.dtype))[0]
