"""The public IP-Adapter checkpoint layout, written and read by facestudio.

A checkpoint is `{"image_proj": {...}, "ip_adapter": {...}}` in the original (tencent-ailab) key names, stored
as one flat safetensors file with `image_proj.` / `ip_adapter.` prefixes: the format diffusers'
`load_ip_adapter` reads. `ip_adapter` holds `"{i}.to_k_ip.weight"` / `"{i}.to_v_ip.weight"` for the k-th
cross-attention layer with `i = 2k + 1` (diffusers' `_convert_ip_adapter_attn_to_diffusers` numbering, which is
the layer's position in the full processor list of a UNet whose blocks pair self- and cross-attention).
Beside it, `facestudio_adapter.json` says what the adapter is and which face recogniser it was built for.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import ModelFileError, first_line
from ..files import write_atomically

WEIGHTS_NAME = "ip-adapter.safetensors"
CONFIG_NAME = "facestudio_adapter.json"


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of a UNet, as its IP-Adapter processor sees it."""

    key: int  # the number in the checkpoint's keys: 2k + 1 for the k-th cross-attention layer
    name: str  # the processor's name, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    hidden_size: int
    cross_attention_dim: int


class AdapterConfig:
    """JSON round trip for the frozen dataclasses that describe an adapter (`facestudio_adapter.json`).

    Subclasses have a `kind` field whose default names the adapter kind; `from_dict` refuses another kind
    and unknown settings, so a wrong folder fails at load time.
    """

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "adapter config"):
        kind = cls.__dataclass_fields__["kind"].default
        if data.get("kind") != kind:
            raise ModelFileError(f"{source}: not a{'n' if kind[0] in 'aeiou' else ''} {kind} adapter "
                                 f"(kind {data.get('kind')!r})")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelFileError(f"{source}: unknown adapter settings {sorted(unknown)}")
        return cls(**data)


def cross_attention_layers(unet) -> list[CrossAttentionLayer]:
    """The UNet's cross-attention layers, read from its `Attention` modules (no block-name parsing)."""
    layers = []
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            key = 2 * len(layers) + 1
            layers.append(CrossAttentionLayer(key, name, attn.to_k.out_features, attn.to_k.in_features))
    return layers


def init_ip_layers(unet) -> dict[str, torch.Tensor]:
    """`ip_adapter` weights whose key/value projections start as copies of the UNet's own `to_k` / `to_v`.

    IP-Adapter (Ye et al. 2023, sec. 3.2) initialises the decoupled projections this way so that training
    starts from attention the UNet already understands.
    """
    state = {}
    for layer in cross_attention_layers(unet):
        attn = unet.get_submodule(layer.name.removesuffix(".processor"))
        state[f"{layer.key}.to_k_ip.weight"] = attn.to_k.weight.detach().clone().float()
        state[f"{layer.key}.to_v_ip.weight"] = attn.to_v.weight.detach().clone().float()
    return state


def ip_layers_from_unet(unet, adapter: int = 0) -> dict[str, torch.Tensor]:
    """The `ip_adapter` weights of loaded adapter number `adapter`, back in checkpoint key names."""
    state = {}
    processors = unet.attn_processors
    for layer in cross_attention_layers(unet):
        proc = processors[layer.name]
        if not hasattr(proc, "to_k_ip"):
            raise ValueError(f"{layer.name} has no IP-Adapter processor: load an adapter first")
        state[f"{layer.key}.to_k_ip.weight"] = proc.to_k_ip[adapter].weight.detach().float().cpu()
        state[f"{layer.key}.to_v_ip.weight"] = proc.to_v_ip[adapter].weight.detach().float().cpu()
    return state


def save_checkpoint(folder: str | os.PathLike, image_proj: dict, ip_adapter: dict, config: dict) -> Path:
    """Write `ip-adapter.safetensors` (flat, prefixed) and `facestudio_adapter.json` into `folder`, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {f"image_proj.{k}": v.detach().contiguous().cpu() for k, v in image_proj.items()}
    flat.update({f"ip_adapter.{k}": v.detach().contiguous().cpu() for k, v in ip_adapter.items()})
    # Bytes through write_atomically: a full disk is an OSError naming the file, and leaves no temporary file.
    write_atomically(folder / WEIGHTS_NAME, safetensors_bytes(flat, metadata={"format": "pt"}))
    write_atomically(folder / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    """`facestudio_adapter.json` of an adapter folder, with a clear error when it is missing or broken."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ModelFileError(f"{folder}: not a facestudio adapter folder (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: unreadable adapter config ({e})") from None
    if not isinstance(config, dict):  # valid JSON, but `[1, 2]` or `null` has no settings to read
        raise ModelFileError(f"{path}: not an adapter config (a JSON object of settings expected, found "
                             f"{type(config).__name__})")
    return config


def read_checkpoint(folder: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The nested `{"image_proj", "ip_adapter"}` state of an adapter folder."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelFileError(f"{folder}: no {WEIGHTS_NAME} in the adapter folder")
    try:
        flat = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ModelFileError(f"{path}: unreadable safetensors file ({e})") from None
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        if part not in nested:
            raise ModelFileError(f"{path}: unexpected key {key!r} (expected image_proj.* and ip_adapter.*)")
        nested[part][rest] = value
    return nested


def convert_pickle_checkpoint(source: str | os.PathLike, destination: str | os.PathLike | None = None, *,
                              overwrite: bool = False) -> Path:
    """Turn a pickled IP-Adapter checkpoint (`.bin`) into the flat safetensors layout, once.

    The pickle is opened only with `torch.load(weights_only=True)`, which refuses anything but tensors and
    plain containers, so a malicious file cannot run code; from then on the safetensors copy loads without
    unpickling anything.

    Args:
        source (`str` or `os.PathLike`): the `.bin` (a nested `{"image_proj": {...}, "ip_adapter": {...}}`).
        destination (`str` or `os.PathLike`, *optional*): defaults to `source` with `.safetensors`.
        overwrite (`bool`, defaults to False): replace an existing destination.

    Returns:
        The destination path. Tensors keep their dtype (the public files are fp16).

    Raises:
        ModelFileError: missing or unreadable file, a pickle that holds more than tensors, not the
            IP-Adapter layout, a folder given as source or destination, or an existing destination without
            `overwrite`.
        OSError: the destination cannot be written (full or read-only disk); nothing is left behind.
    """
    source = Path(source)
    destination = Path(destination) if destination is not None else source.with_suffix(".safetensors")
    if source.is_dir():
        raise ModelFileError(f"{source}: is a folder; give the checkpoint file (.bin) itself")
    if not source.is_file():
        raise ModelFileError(f"{source}: no such file")
    if destination.is_dir():
        raise ModelFileError(f"{destination}: is a folder; give a file path for the output (.safetensors)")
    if destination.exists() and not overwrite:
        raise ModelFileError(f"{destination}: exists; remove it or choose another output")
    flat = _flat_tensors(source, _load_tensors_only(source))
    data = safetensors_bytes(flat, metadata={"format": "pt", "converted_from": source.name})
    return write_atomically(destination, data, overwrite=overwrite)


def _load_tensors_only(source: Path):
    """`torch.load(weights_only=True)`, its refusals in our words (torch's advice to load with
    `weights_only=False` would run whatever code the file holds)."""
    import pickle
    import re

    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the safe unpickler met a class, a function or an instruction
        named = re.search(r"GLOBAL (\S+)", str(e))
        raise ModelFileError(f"{source}: not a checkpoint that loads safely as tensors only: it holds code or "
                             "objects besides tensors" + (f" ({named.group(1)})" if named else "")
                             + ", and is refused for safety") from None
    except Exception as e:  # zip, struct and EOF errors of damaged or foreign files
        raise ModelFileError(f"{source}: not a checkpoint that loads safely as tensors only "
                             f"({type(e).__name__}: {first_line(e)})") from None


def _flat_tensors(source: Path, state) -> dict[str, torch.Tensor]:
    """The nested IP-Adapter state as flat `part.key` tensors that safetensors can store, checked."""
    if not (isinstance(state, dict) and set(state) == {"image_proj", "ip_adapter"}
            and all(isinstance(part, dict) for part in state.values())):
        keys = sorted(state, key=repr)[:5] if isinstance(state, dict) else type(state).__name__
        raise ModelFileError(f"{source}: not an IP-Adapter checkpoint (expected the keys image_proj and "
                             f"ip_adapter, found {keys})")
    flat, storages = {}, set()
    for part, tensors in state.items():
        for key, value in tensors.items():
            name = f"{part}.{key}"
            if not isinstance(value, torch.Tensor):
                raise ModelFileError(f"{source}: {name} is not a tensor")
            if value.layout != torch.strided or value.is_meta or value.is_nested:
                raise ModelFileError(f"{source}: {name} is not a dense tensor with data (layout {value.layout}"
                                     f"{', meta' if value.is_meta else ''})")
            if name in flat:
                raise ModelFileError(f"{source}: the key {name!r} appears twice (as a number and as text)")
            # safetensors refuses tensors that share memory (tied weights, views): those get their own copy
            storage = value.untyped_storage().data_ptr()
            flat[name] = value.clone() if storage in storages else value.contiguous()
            storages.add(storage)
    return flat
