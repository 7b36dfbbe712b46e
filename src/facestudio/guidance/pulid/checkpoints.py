"""PuLID's checkpoints: which file holds which encoder under which prefix, read and checked key by key.

| version       | file (hub `guozinan/PuLID`)     | encoder keys      | encoder        | attention keys             |
| ------------- | ------------------------------- | ----------------- | -------------- | -------------------------- |
| `v1`          | `pulid_v1.bin`                  | `id_adapter.*`    | MLP, 10 tokens | `id_adapter_attn_layers.*` |
| `v1.1`        | `pulid_v1.1.safetensors`        | `id_adapter.*`    | IDFormer, 32   | `id_adapter_attn_layers.*` |
| `flux-v0.9.0` | `pulid_flux_v0.9.0.safetensors` | `pulid_encoder.*` | IDFormer, 32   | `pulid_ca.*`               |
| `flux-v0.9.1` | `pulid_flux_v0.9.1.safetensors` | `pulid_encoder.*` | IDFormer, 32   | `pulid_ca.*`               |

(The reference's `load_pretrain` splits each file by its first key component and loads each part with
`strict=True`.) The FLUX encoder has v1.1's sizes (`IDFormer()` with its defaults in `pipeline_flux.py`).
Every encoder key is checked against the layout the config gives before anything is loaded, and all problems
are named at once; the attention part is handed on unread (`split_checkpoint`), for the UNet / FLUX side.
PuLID's weights are Apache-2.0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ...errors import ModelFileError, first_line
from .idformer import EncoderConfig, IDFormerConfig, MLPEncoderConfig, build_id_encoder

#: The hub repository of PuLID's published checkpoints.
HUB_REPO = "guozinan/PuLID"
LICENSE = "Apache-2.0"


@dataclass(frozen=True)
class PuLIDVersion:
    """One published PuLID checkpoint.

    Attributes:
        name (`str`): `"v1"`, `"v1.1"`, `"flux-v0.9.0"`, `"flux-v0.9.1"`.
        filename (`str`): the file in `HUB_REPO`.
        encoder_prefix (`str`): prefix of the ID encoder's keys.
        attention_prefix (`str`): prefix of the ID attention's keys (the UNet's or FLUX's side).
        encoder (`EncoderConfig`): the encoder's sizes.
    """

    name: str
    filename: str
    encoder_prefix: str
    attention_prefix: str
    encoder: EncoderConfig

    @property
    def joint_photos(self) -> bool:
        """Whether several photos of one person go through the encoder together (the ID former) rather than
        one by one with their tokens side by side (v1)."""
        return isinstance(self.encoder, IDFormerConfig)


VERSIONS: dict[str, PuLIDVersion] = {v.name: v for v in (
    PuLIDVersion("v1", "pulid_v1.bin", "id_adapter.", "id_adapter_attn_layers.", MLPEncoderConfig()),
    PuLIDVersion("v1.1", "pulid_v1.1.safetensors", "id_adapter.", "id_adapter_attn_layers.", IDFormerConfig()),
    PuLIDVersion("flux-v0.9.0", "pulid_flux_v0.9.0.safetensors", "pulid_encoder.", "pulid_ca.", IDFormerConfig()),
    PuLIDVersion("flux-v0.9.1", "pulid_flux_v0.9.1.safetensors", "pulid_encoder.", "pulid_ca.", IDFormerConfig()),
)}


def version(name: str | PuLIDVersion) -> PuLIDVersion:
    """A version by name (a `PuLIDVersion` passes through).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(name, PuLIDVersion):
        return name
    if name not in VERSIONS:
        raise ValueError(f"unknown PuLID version {name!r}; known: {', '.join(VERSIONS)}")
    return VERSIONS[name]


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat `{key: tensor}` from a `.safetensors` file, or from a pickle (`.bin`, `.pt`, `.pth`) through
    `torch.load(weights_only=True)`, which loads tensors and plain containers and runs no code.

    Raises:
        ModelFileError: a missing, unreadable or non-tensor file.
    """
    from ..layout import _load_tensors_only  # the one safe-unpickling path (its refusals in our words)

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: {'is a folder, not a checkpoint file' if path.is_dir() else 'no such file'}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise ModelFileError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    state = _load_tensors_only(path)
    for wrapper in ("module", "model", "state_dict"):  # training checkpoints nest the weights one level down
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a flat state dict of tensors")
    return dict(state)


def split_checkpoint(state: Mapping[str, torch.Tensor], pulid: str | PuLIDVersion,
                     source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A PuLID checkpoint's encoder part and attention part, each with its prefix removed.

    Raises:
        ModelFileError: keys under neither prefix (naming them), or no encoder keys at all.
    """
    v = version(pulid)
    encoder, attention, other = {}, {}, []
    for key, value in state.items():
        if key.startswith(v.encoder_prefix):
            encoder[key[len(v.encoder_prefix):]] = value
        elif key.startswith(v.attention_prefix):
            attention[key[len(v.attention_prefix):]] = value
        else:
            other.append(key)
    if other or not encoder:
        found = sorted({k.split(".")[0] + "." for k in state}) or ["nothing"]
        raise ModelFileError(f"{source}: not a PuLID {v.name} checkpoint: expected keys {v.encoder_prefix}* and "
                             f"{v.attention_prefix}*, found {', '.join(found)}"
                             + (f" (unexpected: {_few(other)})" if other and encoder else ""))
    return encoder, attention


def encoder_layout(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of the encoder's state dict (without prefix) for a config."""
    with torch.device("meta"):  # shapes only: nothing allocated
        module = build_id_encoder(config)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def check_encoder_state(state: Mapping[str, torch.Tensor], pulid: str | PuLIDVersion,
                        config: EncoderConfig | None = None, source: str = "checkpoint") -> None:
    """Compare an encoder state dict (prefix removed) with the layout, every key and every shape.

    Raises:
        ModelFileError: naming every missing, unexpected and mis-shaped key (with the prefix, as in the file).
    """
    v = version(pulid)
    expected = encoder_layout(config or v.encoder)
    found = {key: tuple(value.shape) for key, value in state.items()}
    problems = describe_mismatch(expected, found, v.encoder_prefix)
    if problems:
        raise ModelFileError(f"{source}: its ID encoder does not fit PuLID {v.name}: {problems}")


def describe_mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple], prefix: str = "") -> str:
    """The missing, unexpected and mis-shaped keys of `found` against `expected`, in words ("" when none)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shaped = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"missing {_few(missing, prefix)}")
    if unexpected:
        parts.append(f"unexpected {_few(unexpected, prefix)}")
    if shaped:
        parts.append("wrong shape " + ", ".join(
            f"{prefix}{k} {list(found[k])} (expected {list(expected[k])})" for k in shaped[:5])
            + (f" and {len(shaped) - 5} more" if len(shaped) > 5 else ""))
    return "; ".join(parts)


def load_id_encoder(state: Mapping[str, torch.Tensor], pulid: str | PuLIDVersion,
                    config: EncoderConfig | None = None, source: str = "checkpoint") -> torch.nn.Module:
    """The ID encoder of a PuLID version, its weights from an encoder state dict (prefix removed), checked
    first. The module is in eval mode, float32, on the CPU.

    Raises:
        ModelFileError: as `check_encoder_state`.
    """
    v = version(pulid)
    config = config or v.encoder
    check_encoder_state(state, v, config, source)
    module = build_id_encoder(config)
    module.load_state_dict({k: t.float() for k, t in state.items()}, strict=True)
    return module.eval().requires_grad_(False)


def load_checkpoint_file(path: str | os.PathLike, pulid: str | PuLIDVersion, config: EncoderConfig | None = None):
    """`(id_encoder, attention_state)` from a published PuLID file: the encoder loaded and checked, the
    attention part (prefix removed) for the denoiser's side to check and load."""
    encoder_state, attention_state = split_checkpoint(read_tensors(path), pulid, source=str(path))
    return load_id_encoder(encoder_state, pulid, config, source=str(path)), attention_state


def _few(keys, prefix: str = "", limit: int = 5) -> str:
    shown = ", ".join(prefix + k for k in list(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
