"""PuLID (Guo et al. 2024, arXiv 2404.16022) on SDXL as an identity kind.

A PuLID SDXL checkpoint (`guozinan/PuLID`: `pulid_v1.bin`, `pulid_v1.1.safetensors`) holds two parts, by key
prefix, the names of the reference pipeline's attributes its `load_pretrain` fills (`pulid/pipeline.py`; the
`pulid_encoder` / `pulid_ca` names are PuLID-FLUX's, a different layout):

* `id_adapter.*`: the ID encoder (v1: `IDEncoder`, v1.1: `IDFormer`) that turns the antelopev2 ArcFace
  embedding and EVA02-CLIP-L-14-336 features of the parsed face into ID tokens 2048 wide (10 or 32 per photo)
  (`guidance/pulid/encoder.py`);
* `id_adapter_attn_layers.{i}.id_to_k.weight` / `.id_to_v.weight`: `[inner, 2048]` ID key/value projections
  of every cross-attention layer, `i` its processor's index in the UNet's full processor list (1, 3, ..., 139
  on SDXL). They map one to one onto `PuLIDAttnProcessor.to_k_ip.0` / `.to_v_ip.0` (`guidance/pulid/attention.py`),
  each shape checked at load.

An `Identity` of this kind holds the ID tokens of each photo (`detail`: 10 per photo for v1, 32 for v1.1);
several photos of one person are averaged token by token (v1.1's IDFormer already pools them; the v1 demo
instead appends the first 5 tokens of each extra photo), so every person has the same number of tokens, each
with their own softmax, and ORTHO_v2's "first five tokens" mean the same thing for everyone. The "no reference" input is the encoder's output for a zero embedding and zero
features, as the reference computes it; without the encoder, all-zero tokens (which add exactly nothing).

Modes (the reference demos set module globals for them; here they are the adapter's config):

| mode              | v1 (`app.py`)         | v1.1 (`app_v1_1.py`)                       |
| ----------------- | --------------------- | ------------------------------------------ |
| `fidelity`        | num_zero 8, ortho v2  | num_zero 20, ortho v2 (its demo's default) |
| `extremely-style` | num_zero 16, ortho v1 | the same as v1 (its demo has no such mode) |
| `neutral`         | num_zero 0, no ortho  | the same                                   |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import FaceStudioError, ModelFileError, first_line
from .. import identity as idg
from ..layout import AdapterConfig
from ..pulid.attention import ORTHO_VARIANTS, cross_attention_processors, install_pulid_processors, zero_padded
from .base import AdapterKind

#: Width of PuLID's ID tokens (the SDXL UNet's cross-attention width).
ID_TOKEN_DIM = 2048
#: ID tokens per photo: v1's `IDEncoder` makes 5 from the embeddings and 1 from each of 5 EVA-CLIP layers;
#: v1.1's `IDFormer` 32 from all photos at once.
TOKENS_PER_PHOTO = {"v1": 10, "v1.1": 32}
#: Checkpoint versions and their published files.
VERSIONS = {"v1": "pulid_v1.bin", "v1.1": "pulid_v1.1.safetensors"}
#: mode -> (ortho, num_zero per version); see the module docstring.
MODES = {"fidelity": ("v2", {"v1": 8, "v1.1": 20}),
         "extremely-style": ("v1", {"v1": 16, "v1.1": 16}),
         "neutral": ("off", {"v1": 0, "v1.1": 0})}
#: The checkpoint's parts (key prefixes).
PARTS = ("id_adapter", "id_adapter_attn_layers")
#: The part that holds the ID attention's weights.
ATTENTION = "id_adapter_attn_layers"


@dataclass(frozen=True)
class PuLIDConfig(AdapterConfig):
    """A PuLID checkpoint and the mode it runs in.

    Attributes:
        version (`str`): `"v1"` or `"v1.1"` (which ID encoder the checkpoint holds).
        mode (`str`): `MODES`' `fidelity` (default), `extremely-style` or `neutral`.
        num_zero (`int`, *optional*): zero ID tokens appended, instead of the mode's.
        ortho (`str`): `"off"`, `"v1"` or `"v2"` instead of the mode's; `""`: the mode's.
        cross_attention_dim (`int`): the UNet's, which is the ID tokens' width (2048).
    """

    version: str = "v1"
    mode: str = "fidelity"
    num_zero: int | None = None
    ortho: str = ""
    cross_attention_dim: int = ID_TOKEN_DIM
    kind: str = "identity"
    projection: str = "pulid"

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ModelFileError(f"unknown PuLID version {self.version!r}; known: {sorted(VERSIONS)}")
        if self.mode == "style":  # what the reference's users call it for short
            object.__setattr__(self, "mode", "extremely-style")
        if self.mode not in MODES:
            raise FaceStudioError(f"unknown PuLID mode {self.mode!r}; modes: {', '.join(MODES)}")
        if self.ortho and self.ortho not in ORTHO_VARIANTS:
            raise FaceStudioError(f"PuLID ortho must be one of {ORTHO_VARIANTS}, got {self.ortho!r}")
        if self.num_zero is not None and not 0 <= self.num_zero <= 256:
            raise FaceStudioError(f"PuLID num_zero must be between 0 and 256, got {self.num_zero}")

    @property
    def kind_name(self) -> str:
        return "pulid"

    @property
    def effective_ortho(self) -> str:
        return self.ortho or MODES[self.mode][0]

    @property
    def effective_num_zero(self) -> int:
        return MODES[self.mode][1][self.version] if self.num_zero is None else self.num_zero


class PuLIDProjection(nn.Module):
    """What sits where an IP-Adapter's image projection would (`encoder_hid_proj`): PuLID's ID encoder, so it
    moves with the UNet and goes with `unload_ip_adapter`; None until an encoder is given."""

    def __init__(self, encoder: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder


class PuLIDKind(AdapterKind):
    """PuLID's ID tokens through its own ID attention in every cross-attention layer of an SDXL UNet."""

    name = "pulid"
    projection_class = PuLIDProjection
    #: Loaded by `install`, not by diffusers' `load_ip_adapter` (whose formats it is not).
    installs_itself = True

    @property
    def signature(self) -> str:
        return f"pulid-{self.config.version}"

    # ------------------------------------------------------------------ loading

    def read_checkpoint(self, source, weight_name: str, subfolder: str | None = None, **hub_kwargs) -> dict:
        """`{"id_adapter": {...}, "id_adapter_attn_layers": {...}}` of a published file (local folder or hub
        id), read without running code (safetensors, or a `.bin` through `torch.load(weights_only=True)`)."""
        from diffusers.models.model_loading_utils import load_state_dict
        from diffusers.utils import _get_model_file

        label = "/".join(p for p in (str(source), subfolder, weight_name) if p)
        if not weight_name.endswith((".safetensors", ".bin")):
            raise ModelFileError(f"PuLID checkpoint {label}: expected a .safetensors or .bin file")
        try:
            path = _get_model_file(source, weights_name=weight_name, subfolder=subfolder, **hub_kwargs)
            flat = load_state_dict(path)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelFileError(f"could not load the PuLID checkpoint {label}: {first_line(error)}") from error
        return split_checkpoint(flat, label)

    def layout(self, unet, encoder=None) -> dict[str, tuple[int, ...]]:
        """`id_adapter_attn_layers.{i}.id_to_k.weight` / `.id_to_v.weight` `[inner, token width]` per
        cross-attention layer (the reference's `nn.ModuleList(unet.attn_processors.values())` numbering)."""
        layout = {}
        for index, _, attn in cross_attention_processors(unet):
            for name in ("id_to_k", "id_to_v"):
                layout[f"{ATTENTION}.{index}.{name}.weight"] = (attn.to_k.out_features,
                                                                 self.config.cross_attention_dim)
        return layout

    def check_layout(self, state, unet, encoder, source):
        if not isinstance(state, dict) or set(state) - set(PARTS) or ATTENTION not in state:
            raise ModelFileError(f"{source}: not a PuLID checkpoint (expected keys {ATTENTION}.* and id_adapter.*)")
        widths = {attn.to_k.in_features for _, _, attn in cross_attention_processors(unet)}
        if widths != {self.config.cross_attention_dim}:
            raise ModelFileError(f"PuLID adapter {source} needs a UNet whose cross-attention reads "
                                 f"{self.config.cross_attention_dim}-wide tokens (SDXL); this one reads "
                                 f"{sorted(widths)}")
        expected = self.layout(unet)
        found = {f"{ATTENTION}.{key}": tuple(value.shape) for key, value in state[ATTENTION].items()}
        for key, shape in expected.items():
            if key not in found:
                raise ModelFileError(f"PuLID adapter {source} does not fit this UNet: {key} {list(shape)} is missing")
            if found[key] != shape:
                raise ModelFileError(f"PuLID adapter {source} does not fit this UNet: {key} has shape "
                                     f"{list(found[key])}, expected {list(shape)}")
        extra = sorted(set(found) - set(expected))
        if extra:
            raise ModelFileError(f"PuLID adapter {source} does not fit this UNet: unexpected key {extra[0]} "
                                 f"{list(found[extra[0]])} (a UNet with fewer cross-attention layers?)")

    def install(self, unet, state: dict, encoder=None) -> PuLIDProjection:
        """Put the ID attention into `unet` (the state already checked); the projection that holds the encoder."""
        ca = state[ATTENTION]
        weights = {index: (ca[f"{index}.id_to_k.weight"], ca[f"{index}.id_to_v.weight"])
                   for index, _, _ in cross_attention_processors(unet)}
        install_pulid_processors(unet, weights, self.config.effective_ortho)
        return PuLIDProjection(encoder)

    # ------------------------------------------------------------------ identities

    def encode_photos(self, analyzer, encoder, photos, faces, name=""):
        raise FaceStudioError("PuLID's ID encoder (EVA02-CLIP, face parsing, antelopev2 and the IDFormer) is not "
                              "available in this build: give already encoded PuLID identities")

    def null_identity(self, encoder):
        tokens = np.zeros((TOKENS_PER_PHOTO[self.config.version], self.config.cross_attention_dim), np.float32)
        return identity_from_tokens(tokens, self.signature, "no reference")

    def tokens(self, projection, identity):
        """`[T + num_zero, 2048]`: the person's ID tokens (photos averaged token by token), zeros appended."""
        self.check_identity(identity)
        photos = torch.from_numpy(np.ascontiguousarray(identity.detail, np.float32))
        photos = photos.reshape(identity.num_photos, identity.photo_tokens, -1)
        return zero_padded(photos.mean(0), self.config.effective_num_zero)


def version_of_file(filename: str) -> str:
    """The PuLID version of a published file name (`VERSIONS`)."""
    for version, name in VERSIONS.items():
        if name == filename:
            return version
    raise ModelFileError(f"{filename}: not a published PuLID SDXL checkpoint ({', '.join(VERSIONS.values())})")


def identity_from_tokens(tokens, signature: str, name: str = "") -> idg.Identity:
    """An `Identity` of the PuLID kind (`signature`: `"pulid-v1"` or `"pulid-v1.1"`) from the ID tokens
    `[n, T, D]` (or `[T, D]`) of n photos of one person, T the version's `TOKENS_PER_PHOTO`."""
    version = signature.removeprefix("pulid-")
    if version not in TOKENS_PER_PHOTO:
        raise ValueError(f"not a PuLID signature: {signature!r}")
    array = tokens.detach().float().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    array = np.asarray(array, np.float32)
    if array.ndim == 2:
        array = array[None]
    per_photo = TOKENS_PER_PHOTO[version]
    if array.ndim != 3 or array.shape[1] != per_photo:
        raise ValueError(f"PuLID {version} ID tokens must be [n, {per_photo}, D], got {list(array.shape)}")
    return idg.Identity(np.zeros(0, np.float32), array.reshape(-1, array.shape[-1]), signature, name,
                        tokens_per_photo=per_photo)


def split_checkpoint(flat: dict, source: str) -> dict[str, dict[str, torch.Tensor]]:
    """A flat PuLID state dict `{"id_adapter_attn_layers.1.id_to_k.weight": ...}` by part; another prefix is refused."""
    if not isinstance(flat, dict):
        raise ModelFileError(f"{source}: not a state dict")
    parts: dict[str, dict] = {}
    for key, value in flat.items():
        part, _, rest = str(key).partition(".")
        if part not in PARTS or not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{source}: not a PuLID checkpoint (unexpected key {key!r}; expected "
                                 f"id_adapter.* and id_adapter_attn_layers.*)")
        parts.setdefault(part, {})[rest] = value
    return parts


__all__ = ["ID_TOKEN_DIM", "TOKENS_PER_PHOTO", "MODES", "VERSIONS", "PuLIDConfig", "PuLIDKind", "PuLIDProjection",
           "identity_from_tokens", "split_checkpoint", "version_of_file"]
