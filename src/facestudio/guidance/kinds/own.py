"""facestudio's own adapters: the trained identity adapter (dlib embedding + detail maps) and the style adapter."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import ImageProjection, IPAdapterFaceIDPlusImageProjection

from ...errors import ModelFileError
from .. import identity as idg
from .. import public_layouts as layouts
from .. import style as sty
from .base import AdapterKind


class FaceStudioIdentityKind(AdapterKind):
    """facestudio's trained identity adapter, saved in the FaceID-Plus layout without a LoRA.

    Several photos pool into one identity (embeddings averaged, detail tokens of every photo side by side for
    the perceiver); "no reference" is zeros, as in training's identity dropout.
    """

    name = "facestudio"
    projection_class = IPAdapterFaceIDPlusImageProjection
    reads_embedding = True

    @property
    def signature(self) -> str:
        return self.config.recognizer

    def check_recognizer(self, recognizer, source):
        self.config.check_recognizer(recognizer, source)

    def layout(self, unet, encoder):
        return layouts.faceid_plus(unet, lora_rank=0, id_dim=self.config.id_embedding_dim,
                                   clip_dim=self.config.detail_dim)

    def to_checkpoint(self, projection):
        return idg.projection_to_checkpoint(projection)

    def encode_photos(self, analyzer, encoder, photos, faces, name=""):
        return idg.encode_photos(analyzer, photos, faces, name)

    def null_identity(self, encoder):
        return self.config.null_identity()

    def tokens(self, projection, identity):
        return idg.identity_tokens(projection, identity, self.config)


class StyleKind(AdapterKind):
    """The plain IP-Adapter on a style image (FaceStudio's hybrid guidance): CLIP image embedding -> 4 tokens."""

    name = "ip-adapter"
    role = "style"
    projection_class = ImageProjection

    @property
    def image_encoder(self) -> str:
        return self.config.image_encoder

    @property
    def block_scales(self):
        return self.config.block_scales

    def check_encoder(self, encoder):
        if encoder.embed_dim != self.config.image_embed_dim:
            raise ModelFileError(f"style adapter expects {self.config.image_embed_dim}-d image embeddings; the "
                                 f"image encoder gives {encoder.embed_dim}")

    def layout(self, unet, encoder):
        return layouts.base(unet, num_tokens=sty.NUM_TOKENS, clip_dim=self.config.image_embed_dim)

    def to_checkpoint(self, projection):
        return sty.projection_to_checkpoint(projection)

    def image_tokens(self, projection, encoder, image) -> torch.Tensor:
        """`[4, D]` tokens of a style image; `None` gives "no style": the projection of a zero embedding."""
        embedding = torch.zeros(self.config.image_embed_dim) if image is None else encoder.encode(image)
        return sty.style_tokens(projection, embedding)
