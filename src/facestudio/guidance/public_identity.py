"""The public identity adapters (IP-Adapter-FaceID family, Plus-Face, Full-Face) as facestudio identities.

Each public kind reads other inputs than facestudio's own adapter (dlib embedding + detail map):

| projection      | id embedding                 | detail tokens                                    | "no reference"         |
| --------------- | ---------------------------- | ------------------------------------------------ | ---------------------- |
| `faceid`        | ArcFace 512-d, normed        | none                                             | zeros                  |
| `faceid-plus`   | ArcFace 512-d, normed        | CLIP hidden states of the 224 px aligned face    | zeros + CLIP of blank  |
| `faceid-plusv2` | the same, plus the shortcut  | the same                                         | the same               |
| `plus-face`     | none                         | CLIP hidden states of the 224 px aligned face    | CLIP of blank          |
| `full-face`     | none                         | the same                                         | CLIP of blank          |

("CLIP of blank" is the encoder's output on the all-zero normalised image, as the original IP-Adapter code
computes its unconditional input.) Once encoded, a public identity is an ordinary `Identity`: several photos
pool, identities mix, regions and strengths act through the same attention processors as facestudio's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import FaceStudioError, ModelFileError
from ..faces.analysis import FaceAnalyzer
from . import identity as idg
from .layout import AdapterConfig
from .style import StyleEncoder

#: Public projections, and whether each reads (the ArcFace embedding, the CLIP detail tokens).
READS = {
    "faceid": (True, False),
    "faceid-plus": (True, True),
    "faceid-plusv2": (True, True),
    "plus-face": (False, True),
    "full-face": (False, True),
}

#: The diffusers projection class each public projection loads as (and `ip-adapter`, the plain one for style).
PROJECTION_CLASSES = {
    "faceid": "IPAdapterFaceIDImageProjection",
    "faceid-plus": "IPAdapterFaceIDPlusImageProjection",
    "faceid-plusv2": "IPAdapterFaceIDPlusImageProjection",
    "plus-face": "IPAdapterPlusImageProjection",
    "full-face": "IPAdapterFullImageProjection",
    "ip-adapter": "ImageProjection",
}

#: Side of the aligned face crop the CLIP branches see (insightface's `norm_crop(..., image_size=224)`).
CLIP_FACE_SIZE = 224


@dataclass(frozen=True)
class PublicIdentityConfig(AdapterConfig):
    """A public identity adapter: which projection it has and which encoders feed it.

    Attributes:
        projection (`str`): one of `READS`.
        recognizer (`str`): the face recogniser of the id embedding (`"arcface"`), or `""` when none is read.
        image_encoder (`str`): CLIP vision model of the detail tokens (folder, hub id with an optional folder
            inside it, or `"tiny"`), or `""` when none is read.
        shortcut_scale (`float`): PlusV2's weight of the perceiver output added to the id tokens.
        cross_attention_dim (`int`): the UNet's.
    """

    projection: str = "faceid-plusv2"
    recognizer: str = "arcface"
    image_encoder: str = ""
    shortcut_scale: float = 1.0
    cross_attention_dim: int = 768
    kind: str = "identity"

    def __post_init__(self):
        if self.projection not in READS:
            raise ModelFileError(f"unknown public identity projection {self.projection!r}; known: {sorted(READS)}")
        embedding, detail = READS[self.projection]
        if embedding and not self.recognizer:
            raise ModelFileError(f"{self.projection} reads a face recogniser's embedding: name the recogniser")
        if detail and not self.image_encoder:
            raise ModelFileError(f"{self.projection} reads CLIP image features: name the image encoder")

    @property
    def signature(self) -> str:
        """What an `Identity` for this adapter records as its recogniser: the encoders it came from."""
        embedding, detail = READS[self.projection]
        return "+".join(part for part, used in ((self.recognizer, embedding), ("clip", detail)) if used)

    def check_recognizer(self, recognizer: str, source: str) -> None:
        if READS[self.projection][0] and recognizer != self.recognizer:
            raise ModelFileError(f"identity adapter {source} ({self.projection}) needs the {self.recognizer!r} "
                                 f"face recogniser; the face analyzer has {recognizer!r}")


def encode_photos(analyzer: FaceAnalyzer, encoder: StyleEncoder | None, config: PublicIdentityConfig,
                  photos: Sequence[np.ndarray], faces: Sequence, name: str = "") -> idg.Identity:
    """The `Identity` of one person from RGB arrays and the face to use in each."""
    embedding_used, detail_used = READS[config.projection]
    if embedding_used:
        config.check_recognizer(analyzer.recognizer.name, config.projection)
    if detail_used and encoder is None:
        raise FaceStudioError(f"{config.projection} needs its CLIP image encoder ({config.image_encoder})")
    if not len(photos):
        raise ValueError("an identity needs at least one photo")
    per_photo = []
    for array, chosen in zip(photos, faces):
        embedding = np.zeros(0, np.float32)
        detail = np.zeros((0, 1), np.float32)
        if embedding_used:
            recognizer = analyzer.recognizer
            crop = analyzer.align(array, chosen, recognizer.template, recognizer.input_size).image
            embedding = recognizer.embed_crops(crop[None])[0].astype(np.float32)
        if detail_used:
            crop = analyzer.align(array, chosen, "arcface", CLIP_FACE_SIZE).image
            detail = encoder.hidden_states([crop])[0].float().cpu().numpy()
        per_photo.append(idg.Identity(embedding, detail, config.signature, name, tokens_per_photo=len(detail)))
    return idg.pool(per_photo, name=name)


def null_identity(config: PublicIdentityConfig, encoder: StyleEncoder | None) -> idg.Identity:
    """The "no reference" input of the adapter: a zero embedding, and CLIP's output on a blank image."""
    embedding_used, detail_used = READS[config.projection]
    embedding = np.zeros(512 if embedding_used else 0, np.float32)
    detail = (encoder.blank_hidden_states()[0].float().cpu().numpy() if detail_used
              else np.zeros((0, 1), np.float32))
    return idg.Identity(embedding, detail, config.signature, "no reference", tokens_per_photo=len(detail))


def identity_tokens(projection, identity: idg.Identity, config: PublicIdentityConfig) -> torch.Tensor:
    """The `[T, D]` tokens of one identity through the public projection."""
    if identity.recognizer != config.signature:
        raise ValueError(f"identity {identity.name!r} was encoded for {identity.recognizer!r}; this adapter "
                         f"reads {config.signature!r}")
    param = next(projection.parameters())

    def tensor(array):
        return torch.from_numpy(np.asarray(array, np.float32)).to(param.device, param.dtype)

    kind = config.projection
    if kind == "faceid":
        return projection(tensor(identity.embedding)[None])[0]
    if kind in ("faceid-plus", "faceid-plusv2"):
        return idg.faceid_plus_tokens(projection, identity.embedding, identity.detail,
                                      shortcut=kind == "faceid-plusv2", shortcut_scale=config.shortcut_scale)
    if kind == "plus-face":  # a perceiver: it reads the detail tokens of every photo at once
        return projection(tensor(identity.detail)[None])[0]
    # full-face: one token per CLIP position, so the photos are averaged position by position
    photos = tensor(identity.detail).reshape(identity.num_photos, identity.photo_tokens, -1)
    return projection(photos).mean(0)
