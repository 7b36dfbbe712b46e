"""Loading the public IP-Adapter family through diffusers, without its FaceID-LoRA pitfalls.

`load_public_adapters` and `unload_public_adapters` wrap diffusers' own `pipe.load_ip_adapter` /
`pipe.unload_ip_adapter` (0.42.1); every format diffusers reads (base, Plus, Plus-Face, Full-Face, FaceID,
FaceID-Plus/PlusV2, Portrait) loads exactly as diffusers loads it. Around that call they fix two behaviours
(ADAPTER-FORMATS.md §4, "FaceID LoRA state"):

1. **Stale FaceID LoRA.** A FaceID checkpoint brings a LoRA that diffusers loads into PEFT as `faceid_{k}`
   (k = the adapter's position in the call), and only when no adapter of that name exists yet.
   `unload_ip_adapter` never removes it, so the next FaceID checkpoint runs with the *previous* checkpoint's
   LoRA. Here every `faceid_{k}` LoRA is deleted on unload and before each load.
2. **Only the last LoRA active.** diffusers calls `set_adapters([f"faceid_{k}"])` once per adapter, which
   leaves only the last FaceID LoRA active and switches off the user's own LoRAs. Here, after loading, every
   FaceID LoRA just loaded is active at weight 1 and the user's LoRAs that were active before are active
   again at the per-layer scale they had (block-wise weights included).

Per-identity scales and masks are facestudio's own `RegionMasks` (`attention.py`), which the pipeline passes on
every call; diffusers' per-image scale lists (`set_ip_adapter_scale([[0.7, 0.5]])`) still need masks of their own.

Adapters named `faceid_<number>` are taken to be diffusers' FaceID LoRAs: do not give a LoRA of your own such
a name. `.safetensors` files are preferred; a pickled `.bin` is only ever opened by diffusers, with
`torch.load(weights_only=True)`, which loads tensors and plain containers and runs no code.

Example:

```py
>>> from facestudio.guidance.public_loading import load_public_adapters, unload_public_adapters
>>> load_public_adapters(pipe, "h94/IP-Adapter-FaceID", "ip-adapter-faceid_sd15.bin")
['faceid_0']
>>> image = pipe("a person", ip_adapter_image_embeds=[embeds]).images[0]  # [2, 1, 512]: [negative; positive]
>>> unload_public_adapters(pipe)  # the FaceID LoRA goes too; your own LoRAs stay as they were
```
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from diffusers.utils import USE_PEFT_BACKEND
from torch import nn

from ..errors import FaceStudioError, ModelFileError, first_line

logger = logging.getLogger(__name__)

#: Names diffusers gives the LoRA of the k-th FaceID checkpoint of a `load_ip_adapter` call.
FACEID_LORA_NAME = re.compile(r"faceid_(\d+)")

#: Weight files accepted from a folder or the Hub: flat-prefixed safetensors, or a pickle diffusers opens
#: with `torch.load(weights_only=True)`.
WEIGHT_SUFFIXES = (".safetensors", ".bin")


# ---------------------------------------------------------------------------------------------------------
# Loading and unloading
# ---------------------------------------------------------------------------------------------------------


def load_public_adapters(
    pipe,
    sources: str | os.PathLike | dict | Sequence[str | os.PathLike | dict],
    weight_names: str | None | Sequence[str | None] = None,
    *,
    subfolders: str | None | Sequence[str | None] = None,
    image_encoder_folder: str | None = None,
    prefer_safetensors: bool = True,
    **kwargs,
) -> list[str]:
    """Load public IP-Adapter checkpoints with diffusers' `load_ip_adapter`, FaceID LoRAs all active.

    The UNet afterwards holds exactly these adapters, in this order (as with one `load_ip_adapter` call):
    whatever IP-Adapter was loaded before is replaced, and its FaceID LoRA deleted.

    Args:
        sources (`str`, `os.PathLike`, `dict` or a list of them):
            Per adapter: a local folder or a Hub repository id, or a nested `{"image_proj": ..., "ip_adapter":
            ...}` state dict. One folder or id with several weight names is used for each of them.
        weight_names (`str` or `list[str | None]`, *optional*):
            Per adapter: the file in the folder or repository, ending in `.safetensors` (flat, with the
            `image_proj.` / `ip_adapter.` prefixes) or `.bin` (a pickled nested dict); `None` for a state dict.
        subfolders (`str` or `list[str | None]`, *optional*):
            Per adapter: the folder of the file inside the folder or repository (h94/IP-Adapter: `"models"`).
        image_encoder_folder (`str`, *optional*, defaults to `None`):
            Passed to diffusers: where to load a CLIP image encoder from if the pipeline has none. `None`
            (the default, unlike diffusers') loads none: FaceID repositories have no `image_encoder/`, and
            asking for one there fails with a 404.
        prefer_safetensors (`bool`, defaults to `True`):
            For a `.bin` in a local folder, load the `.safetensors` of the same name beside it instead when
            there is one (as `facestudio convert` writes, and as h94/IP-Adapter ships for several files).
        kwargs:
            Passed to `load_ip_adapter`: `local_files_only`, `cache_dir`, `revision`, `token`, ... and
            `low_cpu_mem_usage`, which defaults to `False` here: diffusers then loads every tensor strictly,
            so a wrong key or shape fails here instead of being skipped.

    Returns:
        `list[str]`: the FaceID LoRA adapters now active (`["faceid_0", ...]`), in adapter order; empty for
        checkpoints without a LoRA.

    Raises:
        ValueError: the lists differ in length, a state dict comes with a weight name, or a file name has
            another suffix.
        FaceStudioError: PEFT (`peft>=0.17`) is not installed; without it diffusers would drop the FaceID
            LoRA with only a log message.
        ModelFileError: diffusers could not find, read or fit a checkpoint. The pipeline then holds no
            IP-Adapter at all; the user's LoRAs are as they were.
    """
    # 1. Check inputs
    sources, weight_names, subfolders = _check_sources(sources, weight_names, subfolders, prefer_safetensors)
    if not USE_PEFT_BACKEND:
        raise FaceStudioError("loading IP-Adapters needs PEFT (peft>=0.17) for the FaceID LoRA: "
                              "`pip install 'peft>=0.17'`")
    kwargs.setdefault("low_cpu_mem_usage", False)
    # 2. The user's LoRAs as they are now, before diffusers switches them off
    user = _remember_user_loras(pipe)
    # 3. Old FaceID LoRAs out: diffusers would keep them and skip loading the new ones of the same name
    _delete_faceid_loras(pipe, user)
    # 4. diffusers loads
    try:
        pipe.load_ip_adapter(sources, subfolder=subfolders, weight_name=weight_names,
                             image_encoder_folder=image_encoder_folder, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        _unload(pipe, user)
        labels = ", ".join(_label(s, w) for s, w in zip(sources, weight_names))
        raise ModelFileError(f"could not load the IP-Adapter {labels}: {first_line(error)}") from error
    except BaseException:
        _unload(pipe, user)
        raise
    # 5. Every FaceID LoRA just loaded active, and the user's LoRAs as they were
    faceid = faceid_lora_names(pipe)
    if faceid:
        _activate(pipe, user, faceid)
        logger.info("active LoRA adapters: %s", [*user.active, *faceid])
    return faceid


def unload_public_adapters(pipe) -> None:
    """Remove the IP-Adapters and their FaceID LoRAs (diffusers' `unload_ip_adapter` keeps the LoRAs).

    The user's own LoRAs stay loaded; those active before stay active, at their scales.
    """
    if not USE_PEFT_BACKEND:  # then no FaceID LoRA can have been loaded
        pipe.unload_ip_adapter()
        return
    _unload(pipe, _remember_user_loras(pipe))


def faceid_lora_names(pipe) -> list[str]:
    """The FaceID LoRA adapters (`faceid_<k>`) loaded in any of the pipeline's models, by k."""
    if not USE_PEFT_BACKEND:
        return []
    names = {name for names in pipe.get_list_adapters().values() for name in names
             if FACEID_LORA_NAME.fullmatch(name)}
    return sorted(names, key=lambda name: int(FACEID_LORA_NAME.fullmatch(name).group(1)))


#: `load_ip_adapter` arguments that say where a file comes from (the rest are about how it loads).
HUB_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def read_checkpoint_file(source: str | os.PathLike, weight_name: str, subfolder: str | None = None, *,
                         prefer_safetensors: bool = True, **hub_kwargs) -> dict[str, dict[str, torch.Tensor]]:
    """The nested `{"image_proj", "ip_adapter"}` state of one public checkpoint, read the way diffusers'
    `load_ip_adapter` reads it (a local folder or the Hub; flat-prefixed safetensors, or a `.bin` through
    `torch.load(weights_only=True)`), so that its layout can be checked before anything is loaded.

    Args:
        source, weight_name, subfolder: as one entry of `load_public_adapters`.
        prefer_safetensors (`bool`, defaults to `True`): as in `load_public_adapters`.
        hub_kwargs: `HUB_ARGUMENTS` (`local_files_only`, `cache_dir`, `token`, ...).

    Raises:
        ValueError: a weight name with another suffix.
        ModelFileError: the file cannot be found or read, or is not in the IP-Adapter layout.
    """
    from diffusers.models.model_loading_utils import load_state_dict
    from diffusers.utils import _get_model_file
    from safetensors.torch import load_file

    (source,), (weight_name,), (subfolder,) = _check_sources(source, weight_name, subfolder, prefer_safetensors)
    try:
        path = _get_model_file(source, weights_name=weight_name, subfolder=subfolder, **hub_kwargs)
        if weight_name.endswith(".safetensors"):
            state = {"image_proj": {}, "ip_adapter": {}}
            for key, value in load_file(path).items():
                part, _, rest = key.partition(".")
                if part in state:
                    state[part][rest] = value
        else:
            state = load_state_dict(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"could not load the IP-Adapter {_label(source, weight_name)}: "
                             f"{first_line(error)}") from error
    if not isinstance(state, dict) or not {"image_proj", "ip_adapter"} & set(state):
        raise ModelFileError(f"{_label(source, weight_name)}: not an IP-Adapter checkpoint (no image_proj or "
                             "ip_adapter keys)")
    return state


# ---------------------------------------------------------------------------------------------------------
# The pipeline's PEFT state
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraState:
    """Some LoRAs as they were: which were active, and each layer's scale for each."""

    active: tuple[str, ...]
    scales: dict[tuple[str, str], dict[str, float]]  # (component, module name) -> adapter -> PEFT scaling


def lora_layers(pipe):
    """`((component, module name), layer)` for every PEFT tuner layer in the pipeline's models."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component, model in pipe.components.items():
        if isinstance(model, nn.Module):
            for name, module in model.named_modules():
                if isinstance(module, BaseTunerLayer):
                    yield (component, name), module


def remember_loras(pipe, keep=lambda name: True) -> LoraState:
    """The LoRAs whose names `keep` accepts, as they are now (active ones, per-layer scales)."""
    active, scales = [], {}
    for key, layer in lora_layers(pipe):
        active += [n for n in layer.active_adapters if keep(n) and n not in active]
        scales[key] = {n: s for n, s in getattr(layer, "scaling", {}).items() if keep(n)}
    return LoraState(tuple(active), scales)


def activate_loras(pipe, kept: LoraState, added: dict[str, float]) -> None:
    """Make exactly `kept`'s active LoRAs (at their own scales) and the `added` ones (at these weights) active."""
    names = [*kept.active, *(n for n in added if n not in kept.active)]
    if names:
        pipe.set_adapters(names, adapter_weights=[added.get(n, 1.0) for n in names])
    else:  # diffusers 0.42.1's set_adapters([]) raises KeyError
        for _, layer in lora_layers(pipe):
            layer.set_adapter([])
    # set_adapters wrote one weight per adapter: put back each layer's own scale of the kept ones, which also keeps
    # per-block weights (`set_adapters(..., [{"unet": {"down": ...}}])`) that one number per adapter would lose
    for key, layer in lora_layers(pipe):
        for name, scale in kept.scales.get(key, {}).items():
            if name in layer.scaling and name not in added:
                layer.scaling[name] = scale


def _remember_user_loras(pipe) -> LoraState:
    return remember_loras(pipe, keep=lambda name: not FACEID_LORA_NAME.fullmatch(name))


def _activate(pipe, user: LoraState, faceid: list[str]) -> None:
    """Make exactly the user's previously active LoRAs and `faceid` active, FaceID at weight 1."""
    activate_loras(pipe, user, {name: 1.0 for name in faceid})


def _delete_faceid_loras(pipe, user: LoraState) -> None:
    names = faceid_lora_names(pipe)
    if not names:
        return
    # Deactivate first: deleting an active adapter makes PEFT activate another one (the alphabetically first)
    _activate(pipe, user, [])
    pipe.delete_adapters(names)
    logger.info("deleted FaceID LoRA adapters %s", names)


def _unload(pipe, user: LoraState) -> None:
    pipe.unload_ip_adapter()
    _delete_faceid_loras(pipe, user)


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def _as_list(value, n: int | None = None) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * (n or 1)


def _check_sources(sources, weight_names, subfolders, prefer_safetensors: bool):
    sources = [s if isinstance(s, dict) else os.fspath(s) for s in _as_list(sources)]
    weight_names = _as_list(weight_names, len(sources))
    if len(sources) == 1 and len(weight_names) > 1:  # one folder or repository, several files in it
        sources = sources * len(weight_names)
    subfolders = _as_list(subfolders, len(sources))
    if not sources:
        raise ValueError("no IP-Adapter to load")
    if not len(sources) == len(weight_names) == len(subfolders):
        raise ValueError(f"{len(sources)} sources, {len(weight_names)} weight names and {len(subfolders)} "
                         "subfolders: give one of each per adapter")
    for i, (source, weight_name, subfolder) in enumerate(zip(sources, weight_names, subfolders)):
        if isinstance(source, dict):
            if weight_name is not None:
                raise ValueError(f"adapter {i} is a state dict and takes no weight name (got {weight_name!r})")
            continue
        if not isinstance(weight_name, str) or not weight_name.endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"adapter {i} ({source}): the weight name must end in "
                             f"{' or '.join(WEIGHT_SUFFIXES)}, got {weight_name!r}")
        if prefer_safetensors and weight_name.endswith(".bin") and os.path.isdir(source):
            safe = weight_name.removesuffix(".bin") + ".safetensors"
            if Path(source, subfolder or "", safe).is_file():
                logger.info("%s: loading %s instead of the pickle %s", source, safe, weight_name)
                weight_names[i] = safe
    return sources, weight_names, subfolders


def _label(source, weight_name) -> str:
    if isinstance(source, dict):
        return "<state dict>"
    return f"{source}/{weight_name}" if weight_name else str(source)

