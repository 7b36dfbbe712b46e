"""PuLID-FLUX (guozinan/PuLID `pulid_flux_v0.9.1.safetensors`) as an identity kind of the FLUX pipeline.

The checkpoint is flat: `pulid_encoder.*` (the IDFormer of PuLID's ID encoder, shared with PuLID on SDXL and
read by that encoder) and `pulid_ca.N.*` (the identity cross-attentions of `guidance.pulid_flux`, checked here
one to one against the transformer they go into). An identity is its 32 ID tokens of 2048 numbers per photo
(`Identity.detail`); "no identity" is what the encoder gives for zero inputs, used by the guidance rows that
go without the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch

from ...errors import FaceStudioError, ModelFileError
from ..identity import Identity
from ..pulid_flux import IdentityCrossAttentions, insertion_points
from .base import AdapterKind

#: What an `Identity` made by PuLID's ID encoder records as its recogniser (EVA02-CLIP + antelopev2 + IDFormer).
PULID_SIGNATURE = "pulid"
#: Key prefixes of the published checkpoint: the cross-attentions (this kind) and the ID encoder's IDFormer.
CA_PREFIX, ENCODER_PREFIX = "pulid_ca.", "pulid_encoder."


@dataclass(frozen=True)
class PuLIDFluxConfig:
    """The published PuLID-FLUX architecture (v0.9.0 and v0.9.1 share it).

    Attributes:
        id_dim (`int`): width of an ID token. num_tokens (`int`): ID tokens per photo.
        heads, head_dim (`int`): of each cross-attention. double_interval, single_interval (`int`): where the
            cross-attentions sit (`guidance.pulid_flux.insertion_points`).
    """

    id_dim: int = 2048
    num_tokens: int = 32
    heads: int = 16
    head_dim: int = 128
    double_interval: int = 2
    single_interval: int = 4
    kind_name: ClassVar[str] = "pulid-flux"

    def to_dict(self) -> dict:
        return {"kind": self.kind_name, **asdict(self)}

    def modules_for(self, transformer) -> IdentityCrossAttentions:
        """The cross-attentions for `transformer` (random weights until a checkpoint is loaded into them)."""
        return IdentityCrossAttentions.for_transformer(
            transformer, id_dim=self.id_dim, heads=self.heads, head_dim=self.head_dim,
            double_interval=self.double_interval, single_interval=self.single_interval)


def pulid_identity(tokens, name: str = "") -> Identity:
    """An `Identity` from ID tokens `[T, id_dim]` (or `[1, T, id_dim]` as the encoder gives them). Mixing
    (`identity.mix`) averages the tokens of the people with the mix weights, token by token."""
    array = np.asarray(tokens.detach().float().cpu() if isinstance(tokens, torch.Tensor) else tokens, np.float32)
    array = array.reshape(-1, array.shape[-1])
    return Identity(np.zeros(0, np.float32), array, PULID_SIGNATURE, name, tokens_per_photo=array.shape[0])


class PuLIDFluxKind(AdapterKind):
    """PuLID-FLUX: ID tokens read by cross-attentions between FLUX's blocks (not an IP-Adapter projection).

    Photos become ID tokens through PuLID's ID encoder (`guidance.pulid.encoder.PuLIDEncoder`, version
    `flux-v0.9.1`), the same as PuLID on SDXL.
    """

    name = "pulid-flux"
    projection_class = IdentityCrossAttentions

    @property
    def signature(self) -> str:
        return PULID_SIGNATURE

    def layout(self, transformer, encoder=None) -> dict[str, tuple[int, ...]]:
        """`{"pulid_ca.N.param": shape}` for `transformer` (from its config: nothing is built)."""
        c = self.config
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        inner = c.heads * c.head_dim
        one = {"norm1.weight": (c.id_dim,), "norm1.bias": (c.id_dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
               "to_q.weight": (inner, dim), "to_kv.weight": (2 * inner, c.id_dim), "to_out.weight": (dim, inner)}
        count = len(insertion_points(transformer.config.num_layers, transformer.config.num_single_layers,
                                     c.double_interval, c.single_interval))
        return {f"{CA_PREFIX}{i}.{key}": shape for i in range(count) for key, shape in one.items()}

    def check_layout(self, state_dict: dict, transformer, encoder=None, source: str = "") -> None:
        """Compare a flat checkpoint's `pulid_ca.*` keys with `layout`, one to one, every shape; `pulid_encoder.*`
        keys are the ID encoder's to check; any other key is refused.

        Raises:
            ModelFileError: naming the first key that is missing, unexpected or of another shape.
        """
        expected = self.layout(transformer)
        where = f"PuLID-FLUX checkpoint {source}".rstrip()
        for key, shape in expected.items():
            if key not in state_dict:
                raise ModelFileError(f"{where} does not fit this transformer: {key} {list(shape)} is missing")
            if tuple(state_dict[key].shape) != shape:
                raise ModelFileError(f"{where} does not fit this transformer: {key} has shape "
                                     f"{list(state_dict[key].shape)}, expected {list(shape)}")
        extra = [k for k in state_dict if k not in expected and not k.startswith(ENCODER_PREFIX)]
        if extra:
            raise ModelFileError(f"{where} does not fit this transformer: unexpected key {extra[0]} "
                                 f"{list(state_dict[extra[0]].shape)}")

    def modules_from(self, state_dict: dict, transformer, source: str = "") -> IdentityCrossAttentions:
        """The checked cross-attentions with the checkpoint's weights."""
        self.check_layout(state_dict, transformer, source=source)
        modules = self.config.modules_for(transformer)
        modules.load_state_dict({k: v for k, v in state_dict.items() if k.startswith(CA_PREFIX)}, strict=True)
        return modules.eval()

    def encode_photos(self, analyzer, encoder, photos, faces, name=""):
        if encoder is None:
            raise FaceStudioError("PuLID-FLUX needs PuLID's ID encoder to read photos, and none is loaded; give "
                                  "encoded identities (pulid_identity(tokens)) or load the encoder")
        # PuLID's ID former reads all photos of a person together (up to 4): 32 tokens whatever their number
        return pulid_identity(encoder.encode(photos, faces).cond, name)

    def null_identity(self, encoder) -> Identity:
        """The encoder's tokens for zero inputs (PuLID's `uncond_id`); zeros when no encoder is loaded."""
        if encoder is not None:
            return pulid_identity(encoder.null_tokens(), "no identity")
        return pulid_identity(np.zeros((self.config.num_tokens, self.config.id_dim), np.float32), "no identity")

    def tokens(self, projection, identity: Identity) -> torch.Tensor:
        self.check_identity(identity)
        if identity.detail.shape[-1] != self.config.id_dim:
            raise ValueError(f"identity {identity.name!r} has {identity.detail.shape[-1]}-wide tokens; PuLID-FLUX "
                             f"reads {self.config.id_dim}")
        return torch.from_numpy(np.ascontiguousarray(identity.detail))
