"""The public identity adapters (IP-Adapter-FaceID family, Plus-Face, Full-Face, FaceID-Portrait) as kinds.

| kind              | id embedding            | CLIP detail tokens          | photos of one person         | "no reference"        |
| ----------------- | ----------------------- | --------------------------- | ---------------------------- | --------------------- |
| `faceid`          | ArcFace 512-d, normed   | none                        | embeddings averaged          | zeros                 |
| `faceid-plus(v2)` | the same                | of the 224 px aligned face  | averaged / tokens kept       | zeros + CLIP of blank |
| `plus-face`       | none                    | the same                    | the perceiver reads them all | CLIP of blank         |
| `full-face`       | none                    | the same                    | tokens averaged per position | CLIP of blank         |
| `faceid-portrait` | ArcFace 512-d, normed   | none                        | 16 tokens each, side by side | zeros                 |

("CLIP of blank" is the encoder's output on the all-zero normalised image, IP-Adapter's unconditional input.)
"""

from __future__ import annotations

import numpy as np
from diffusers.models.embeddings import (
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
)

from ...errors import FaceStudioError, ModelFileError
from .. import identity as idg
from .. import public_layouts as layouts
from .base import AdapterKind, as_tensor

#: Side of the aligned face crop the CLIP branches see (insightface's `norm_crop(..., image_size=224)`).
CLIP_FACE_SIZE = 224


class PublicIdentityKind(AdapterKind):
    """What the public identity kinds share: per-photo encoding by the recogniser and/or CLIP, then pooling."""

    @property
    def image_encoder(self) -> str:
        return self.config.image_encoder if self.reads_detail else ""

    @property
    def signature(self) -> str:
        parts = ((self.config.recognizer, self.reads_embedding), ("clip", self.reads_detail))
        return "+".join(part for part, used in parts if used)

    def check_recognizer(self, recognizer, source):
        if self.reads_embedding and recognizer != self.config.recognizer:
            raise ModelFileError(f"identity adapter {source} ({self.name}) needs the {self.config.recognizer!r} "
                                 f"face recogniser; the face analyzer has {recognizer!r}")

    def encode_photos(self, analyzer, encoder, photos, faces, name=""):
        if self.reads_embedding:
            self.check_recognizer(analyzer.recognizer.name, self.name)
        if self.reads_detail and encoder is None:
            raise FaceStudioError(f"{self.name} needs its CLIP image encoder ({self.config.image_encoder})")
        if not len(photos):
            raise ValueError("an identity needs at least one photo")
        # every photo's crops first, then one recogniser run and one encoder run for the whole identity
        embeddings = np.zeros((len(photos), 0), np.float32)
        details = np.zeros((len(photos), 0, 1), np.float32)
        if self.reads_embedding:
            recognizer = analyzer.recognizer
            crops = np.stack([analyzer.align(p, f, recognizer.template, recognizer.input_size).image
                              for p, f in zip(photos, faces)])
            embeddings = recognizer.embed_crops(crops).astype(np.float32)
        if self.reads_detail:
            crops = [analyzer.align(p, f, "arcface", CLIP_FACE_SIZE).image for p, f in zip(photos, faces)]
            details = encoder.hidden_states(crops).float().cpu().numpy()
        per_photo = [idg.Identity(e, d, self.signature, name, tokens_per_photo=len(d))
                     for e, d in zip(embeddings, details)]
        return self.combine(per_photo, name)

    def combine(self, per_photo: list[idg.Identity], name: str) -> idg.Identity:
        """Several photos' identities as one: embeddings averaged and renormalised, detail tokens kept."""
        return idg.pool(per_photo, name=name)

    def null_identity(self, encoder):
        embedding = np.zeros(layouts.ARCFACE_DIM if self.reads_embedding else 0, np.float32)
        detail = (encoder.blank_hidden_states()[0].float().cpu().numpy() if self.reads_detail
                  else np.zeros((0, 1), np.float32))
        return idg.Identity(embedding, detail, self.signature, "no reference", tokens_per_photo=len(detail))

    def _clip_dim(self, encoder) -> int:
        return encoder.model.config.hidden_size


class FaceIDKind(PublicIdentityKind):
    """IP-Adapter-FaceID: the ArcFace embedding through an MLP to 4 tokens, with a LoRA on every attention."""

    name = "faceid"
    projection_class = IPAdapterFaceIDImageProjection
    reads_embedding = True

    def layout(self, unet, encoder):
        return layouts.faceid(unet, lora_rank=self.config.lora_rank)

    def tokens(self, projection, identity):
        self.check_identity(identity)
        return projection(as_tensor(projection, identity.embedding)[None])[0]


class FaceIDPlusKind(PublicIdentityKind):
    """IP-Adapter-FaceID-Plus: FaceID's 4 tokens refined by a perceiver over CLIP features of the face."""

    name = "faceid-plus"
    projection_class = IPAdapterFaceIDPlusImageProjection
    reads_embedding = reads_detail = True
    #: PlusV2 adds the id tokens to the perceiver output (`shortcut`); the weights cannot tell them apart.
    shortcut = False

    def layout(self, unet, encoder):
        return layouts.faceid_plus(unet, lora_rank=self.config.lora_rank, clip_dim=self._clip_dim(encoder))

    def tokens(self, projection, identity):
        self.check_identity(identity)
        return idg.faceid_plus_tokens(projection, identity.embedding, identity.detail, shortcut=self.shortcut,
                                      shortcut_scale=self.config.shortcut_scale)


class FaceIDPlusV2Kind(FaceIDPlusKind):
    name = "faceid-plusv2"
    shortcut = True


class PlusFaceKind(PublicIdentityKind):
    """IP-Adapter Plus-Face: a perceiver with 16 learned queries over CLIP features; it reads every photo at once."""

    name = "plus-face"
    projection_class = IPAdapterPlusImageProjection
    reads_detail = True

    def layout(self, unet, encoder):
        return layouts.plus_face(unet, clip_dim=self._clip_dim(encoder))

    def tokens(self, projection, identity):
        self.check_identity(identity)
        return projection(as_tensor(projection, identity.detail)[None])[0]


class FullFaceKind(PublicIdentityKind):
    """IP-Adapter Full-Face: one token per CLIP position, so several photos are averaged position by position."""

    name = "full-face"
    projection_class = IPAdapterFullImageProjection
    reads_detail = True

    def layout(self, unet, encoder):
        return layouts.full_face(unet, clip_dim=self._clip_dim(encoder))

    def tokens(self, projection, identity):
        self.check_identity(identity)
        photos = as_tensor(projection, identity.detail).reshape(identity.num_photos, identity.photo_tokens, -1)
        return projection(photos).mean(0)


class FaceIDPortraitKind(PublicIdentityKind):
    """IP-Adapter-FaceID-Portrait: 16 tokens per photo, several photos side by side under one softmax.

    It was trained on 5 photos of a person at once, each photo's 16 tokens concatenated (the way diffusers'
    several images of one adapter enter attention), so the photos are not averaged: the identity keeps each
    photo's normed embedding as one row of `detail` (one "token" per photo), and `tokens` gives `[N * 16, D]`.
    No LoRA. A mix of people (one row, a blend of embeddings) is renormalised before the projection.
    """

    name = "faceid-portrait"
    projection_class = IPAdapterFaceIDImageProjection
    reads_embedding = True
    #: Tokens per photo of the published `ip-adapter-faceid-portrait_sd15.bin` (ADAPTER-FORMATS.md §2.4).
    tokens_per_photo = 16

    @property
    def signature(self) -> str:
        return f"{self.config.recognizer}+photos"

    def layout(self, unet, encoder):
        return layouts.faceid(unet, lora_rank=0, num_tokens=self.tokens_per_photo)

    def combine(self, per_photo, name):
        embeddings = np.stack([i.embedding for i in per_photo])
        pooled = idg.pool(per_photo, name=name).embedding
        return idg.Identity(pooled, embeddings, self.signature, name, tokens_per_photo=1)

    def null_identity(self, encoder):
        # one zero photo: N zero photos give N copies of the same 16 tokens, the same attention under one softmax
        zero = np.zeros(layouts.ARCFACE_DIM, np.float32)
        return idg.Identity(zero, zero[None], self.signature, "no reference", tokens_per_photo=1)

    def tokens(self, projection, identity):
        self.check_identity(identity)
        rows = identity.detail / np.maximum(np.linalg.norm(identity.detail, axis=1, keepdims=True), 1e-12)
        tokens = projection(as_tensor(projection, rows))  # [N, 16, D]
        return tokens.reshape(-1, tokens.shape[-1])
