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
        eva_clip, bisenet, antelopev2 (`str`): the encoder's files (`EVA02_CLIP_L_336_psz14_s6B.pt`,
            `parsing_bisenet.pth`, `glintr100.onnx` or its folder); without them no photos can be encoded
            (identities given as ID tokens still work).
        sizes (`str`): `"published"`, or `"tiny"`: the encoder at test widths (`encoder.tiny_encoder_config`,
            `eva.TINY_EVA`) with tokens `cross_attention_dim` wide, for tiny checkpoints (smoke tests only).
    """

    version: str = "v1"
    mode: str = "fidelity"
    num_zero: int | None = None
    ortho: str = ""
    cross_attention_dim: int = ID_TOKEN_DIM
    eva_clip: str = ""
    bisenet: str = ""
    antelopev2: str = ""
    sizes: str = "published"
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
        if self.sizes not in ("published", "tiny"):
            raise FaceStudioError(f"PuLID sizes must be 'published' or 'tiny', got {self.sizes!r}")

    def encoder_sizes(self):
        """`(ID encoder config, EVA-CLIP config)` of `sizes` (ID tokens as wide as the UNet reads)."""
        from ..pulid.encoder import encoder_sizes

        return encoder_sizes(self.version, self.sizes, self.cross_attention_dim)

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
    """What sits where an IP-Adapter's image projection would (`encoder_hid_proj`): the modules of PuLID's ID
    encoder (ID former, EVA-CLIP, BiSeNet), so they move with the UNet (`.to()`, offload) and go with diffusers'
    `unload_ip_adapter`; empty when identities come as ID tokens."""

    def __init__(self, encoder=None):
        super().__init__()
        if encoder is not None:
            self.id_encoder, self.tower, self.parser = encoder.id_encoder, encoder.tower.model, encoder.parser.model


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
        if "id_adapter" not in state:
            raise ModelFileError(f"{source}: not a PuLID checkpoint: no id_adapter.* (ID encoder) keys")
        from ..pulid import checkpoints

        checkpoints.check_encoder_state(state["id_adapter"], self.config.version, self.config.encoder_sizes()[0],
                                        source=str(source))

    def install(self, unet, state: dict, encoder=None) -> PuLIDProjection:
        """Put the ID attention into `unet` (the state already checked) and make the ID encoder: `encoder` (a
        ready `PuLIDEncoder`), else one from the checkpoint's `id_adapter.*` part and the config's files. The
        returned projection holds the encoder's modules, so they move with the UNet."""
        ca = state[ATTENTION]
        weights = {index: (ca[f"{index}.id_to_k.weight"], ca[f"{index}.id_to_v.weight"])
                   for index, _, _ in cross_attention_processors(unet)}
        if encoder is None and "id_adapter" in state:
            encoder = self._encoder_from(state["id_adapter"])
        if encoder is not None:
            self._check_encoder(encoder)
        install_pulid_processors(unet, weights, self.config.effective_ortho)
        self.encoder = encoder
        return PuLIDProjection(encoder)

    def _encoder_from(self, state: dict):
        """The ID encoder from the checkpoint (every key checked), with EVA-CLIP and BiSeNet from their files;
        None when those are not given (identities then come as ID tokens)."""
        from ..pulid.encoder import PuLIDEncoder

        if not (self.config.eva_clip and self.config.bisenet):
            return None
        return PuLIDEncoder.from_files(self.config.version, state, self.config.eva_clip, self.config.bisenet,
                                       self.config.antelopev2 or None, sizes=self.config.sizes,
                                       width=self.config.cross_attention_dim)

    def _check_encoder(self, encoder) -> None:
        if encoder.version.name != self.config.version:
            raise ModelFileError(f"a PuLID {encoder.version.name} encoder given for a {self.config.version} checkpoint")
        with torch.no_grad():
            width = encoder.null_tokens(1).shape[-1]
        if width != self.config.cross_attention_dim:
            raise ModelFileError(f"the PuLID encoder makes {width}-wide ID tokens; the UNet reads "
                                 f"{self.config.cross_attention_dim}")

    # ------------------------------------------------------------------ identities

    #: The loaded ID encoder (set by `install`: state of the load, read by every call, never written by one).
    encoder = None

    def encode_photos(self, analyzer, encoder, photos, faces, name=""):
        """One person's ID tokens: v1.1 reads all photos together (its IDFormer), v1 each photo alone."""
        from ..pulid.encoder import MAX_PHOTOS

        encoder = self.encoder
        if encoder is None or encoder.recognizer is None:
            raise FaceStudioError(f"PuLID cannot encode photos without its encoder files: {self._missing()}")
        if not 1 <= len(photos) <= MAX_PHOTOS:
            raise FaceStudioError(f"{name or 'a person'}: PuLID reads 1 to {MAX_PHOTOS} photos of a person, "
                                  f"got {len(photos)}")
        if encoder.version.joint_photos:
            tokens = encoder.encode(photos, faces).cond
        else:
            tokens = torch.cat([encoder.encode([photo], [face]).cond for photo, face in zip(photos, faces)])
        return identity_from_tokens(tokens, self.signature, name)

    def _missing(self) -> str:
        named = {"EVA-CLIP (eva_clip)": self.config.eva_clip, "BiSeNet (bisenet)": self.config.bisenet,
                 "antelopev2 (antelopev2)": self.config.antelopev2}
        return ", ".join(what for what, path in named.items() if not path) or "none missing"

    def null_identity(self, encoder):
        """The encoder's tokens for zero input, as the reference feeds with the negative prompt; all-zero tokens
        (which add nothing) when no encoder is loaded."""
        if self.encoder is not None:
            return identity_from_tokens(self.encoder.null_tokens(1), self.signature, "no reference")
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
