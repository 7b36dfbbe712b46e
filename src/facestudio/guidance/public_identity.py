"""The config of a public identity adapter (IP-Adapter-FaceID family, Plus-Face, Full-Face, FaceID-Portrait).

What each kind reads, its "no reference" input and its tokens live in its kind class (`guidance/kinds/public.py`);
once encoded, a public identity is an ordinary `Identity`: identities mix, regions and strengths act through
the same attention processors as facestudio's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelFileError
from .layout import AdapterConfig


@dataclass(frozen=True)
class PublicIdentityConfig(AdapterConfig):
    """A public identity adapter: which kind it is and which encoders feed it.

    Attributes:
        projection (`str`): its kind's name (`kinds.public_identity_kinds()`: `faceid`, `faceid-plusv2`, ...).
        recognizer (`str`): the face recogniser of the id embedding (`"arcface"`), or `""` when none is read.
        image_encoder (`str`): CLIP vision model of the detail tokens (folder, hub id with an optional folder
            inside it, or `"tiny"`), or `""` when none is read.
        shortcut_scale (`float`): PlusV2's weight of the perceiver output added to the id tokens.
        cross_attention_dim (`int`): the UNet's.
        lora_rank (`int`): rank of the FaceID LoRA in the checkpoint (128 in the published files), checked at load.
    """

    projection: str = "faceid-plusv2"
    recognizer: str = "arcface"
    image_encoder: str = ""
    shortcut_scale: float = 1.0
    cross_attention_dim: int = 768
    lora_rank: int = 128
    kind: str = "identity"

    def __post_init__(self):
        from .kinds import public_identity_kinds

        kinds = public_identity_kinds()
        if self.projection not in kinds:
            raise ModelFileError(f"unknown public identity projection {self.projection!r}; known: {sorted(kinds)}")
        kind = kinds[self.projection]
        if kind.reads_embedding and not self.recognizer:
            raise ModelFileError(f"{self.projection} reads a face recogniser's embedding: name the recogniser")
        if kind.reads_detail and not self.image_encoder:
            raise ModelFileError(f"{self.projection} reads CLIP image features: name the image encoder")

    @property
    def kind_name(self) -> str:
        return self.projection
