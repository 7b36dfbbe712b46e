"""Few-step speed models: distillation LoRAs that make a base model draw in 4-8 steps without guidance.

Each entry of `SPEED_MODELS` is a public LoRA file with what it was made for: the sampler, the timestep
spacing, the steps and the guidance scale (1: one UNet row per step, see `guidance.cfg`), and its licence.
It loads as a PEFT adapter of its own (`SPEED_ADAPTER`) through diffusers' `load_lora_weights`, beside a
FaceID checkpoint's LoRA and the user's own, each active at its own weight; `unload_speed_model` deletes it,
which leaves the UNet's outputs exactly what they were before.

Example:
    ```py
    >>> from facestudio.sampling.speed import SPEED_MODELS, load_speed_model
    >>> load_speed_model(pipe, "hyper-sd15-4step")            # downloads the LoRA once
    >>> settings = GenerationSettings("a portrait", identities=people, **SPEED_MODELS["hyper-sd15-4step"].settings())
    >>> image = pipe(settings).images[0]                      # 4 steps, 1 UNet evaluation each
    ```
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FaceStudioError, ModelFileError, first_line
from ..presets import HubFile
from .schedulers import SCHEDULERS, TIMESTEP_SPACINGS

logger = logging.getLogger(__name__)

#: The PEFT adapter name a speed LoRA is loaded under.
SPEED_ADAPTER = "speed"

_OPENRAIL = "CreativeML Open RAIL++-M (use-based restrictions; commercial use allowed)"


@dataclass(frozen=True)
class SpeedModel:
    """One few-step LoRA and the settings it was distilled for.

    Attributes:
        name (`str`): what `--speed` takes.
        description (`str`): one line for listings.
        file (`HubFile`): the LoRA weights (kohya or diffusers layout; diffusers reads both).
        sdxl (`bool`): made for SDXL (else SD 1.5).
        scheduler (`str`): the sampler (`schedulers.SCHEDULERS`).
        timestep_spacing (`str`, *optional*): the spacing it needs over the base scheduler's (`"trailing"`).
        steps (`int`), guidance_scale (`float`): what it was made for (1: no classifier-free guidance).
        weight (`float`): its LoRA weight.
        licence (`str`), non_commercial (`bool`): the weights' licence.
    """

    name: str
    description: str
    file: HubFile
    sdxl: bool
    scheduler: str
    steps: int
    licence: str
    non_commercial: bool = False
    timestep_spacing: str | None = None
    guidance_scale: float = 1.0
    weight: float = 1.0

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS or self.timestep_spacing not in (None, *TIMESTEP_SPACINGS):
            raise ValueError(f"speed model {self.name}: unknown sampler or spacing")

    def settings(self) -> dict:
        """The `GenerationSettings` fields it was made for (the reference scale as the text scale)."""
        return {"speed": self.name, "scheduler": self.scheduler, "num_inference_steps": self.steps,
                "text_guidance_scale": self.guidance_scale, "reference_guidance_scale": self.guidance_scale}


_HYPER = ("ByteDance/Hyper-SD: the licence in the repository's LICENSE.md (ByteDance; read it before commercial "
          "use)")

SPEED_MODELS: dict[str, SpeedModel] = {m.name: m for m in (
    SpeedModel("hyper-sd15-4step", "Hyper-SD 4-step LoRA for SD 1.5 (DDIM, trailing, no guidance)",
               HubFile("ByteDance/Hyper-SD", "Hyper-SD15-4steps-lora.safetensors"), False, "ddim", 4, _HYPER,
               timestep_spacing="trailing"),
    SpeedModel("hyper-sd15-8step", "Hyper-SD 8-step LoRA for SD 1.5 (DDIM, trailing, no guidance)",
               HubFile("ByteDance/Hyper-SD", "Hyper-SD15-8steps-lora.safetensors"), False, "ddim", 8, _HYPER,
               timestep_spacing="trailing"),
    SpeedModel("lcm-sd15", "LCM-LoRA for SD 1.5 (LCM sampler, 4 steps, guidance 1-2)",
               HubFile("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors"), False, "lcm", 4,
               _OPENRAIL),
    SpeedModel("tcd-sd15", "TCD LoRA for SD 1.5 (TCD sampler, gamma 0.3, 4 steps)",
               HubFile("h1t/TCD-SD15-LoRA", "pytorch_lora_weights.safetensors"), False, "tcd", 4, "MIT"),
    SpeedModel("hyper-sdxl-4step", "Hyper-SD 4-step LoRA for SDXL (DDIM, trailing, no guidance)",
               HubFile("ByteDance/Hyper-SD", "Hyper-SDXL-4steps-lora.safetensors"), True, "ddim", 4, _HYPER,
               timestep_spacing="trailing"),
    SpeedModel("lightning-sdxl-4step", "SDXL-Lightning 4-step LoRA (Euler, trailing, no guidance)",
               HubFile("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors"), True, "euler", 4,
               _OPENRAIL, timestep_spacing="trailing"),
    SpeedModel("lcm-sdxl", "LCM-LoRA for SDXL (LCM sampler, 4 steps, guidance 1-2)",
               HubFile("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors"), True, "lcm", 4,
               _OPENRAIL),
    SpeedModel("tcd-sdxl", "TCD LoRA for SDXL (TCD sampler, gamma 0.3, 4 steps)",
               HubFile("h1t/TCD-SDXL-LoRA", "pytorch_lora_weights.safetensors"), True, "tcd", 4, "MIT"),
    # DMD2's card samples 999, 749, 499, 249; LCM's 4-step timesteps are 999, 759, 499, 259
    SpeedModel("dmd2-sdxl-4step", "DMD2 4-step LoRA for SDXL (LCM sampler, no guidance); non-commercial",
               HubFile("tianweiy/DMD2", "dmd2_sdxl_4step_lora_fp16.safetensors"), True, "lcm", 4,
               "CC BY-NC 4.0 (non-commercial)", non_commercial=True),
)}


def get_speed_model(name: str, option: str = "speed") -> SpeedModel:
    """The speed model `name`, else a `FaceStudioError` listing them (`option` as the front end names it)."""
    try:
        return SPEED_MODELS[name]
    except KeyError:
        raise FaceStudioError(f"{option} {name!r}: not a known speed model; use one of "
                              f"{', '.join(SPEED_MODELS)}") from None


def loaded_speed_model(pipe) -> SpeedModel | None:
    """The speed model `load_speed_model` loaded into `pipe` (None: none)."""
    return getattr(pipe, "speed_model", None)


def load_speed_model(pipe, model: str | SpeedModel, *, weights: str | os.PathLike | None = None,
                     weight: float | None = None, **hub_kwargs) -> SpeedModel:
    """Load a speed LoRA as the PEFT adapter `SPEED_ADAPTER`, active beside the LoRAs active now.

    Args:
        pipe: a facestudio (or diffusers Stable Diffusion) pipeline of the speed model's architecture.
        model (`str` or `SpeedModel`): a name of `SPEED_MODELS`, or an entry of one's own.
        weights (`str` or `os.PathLike`, *optional*): a local file (or folder holding the model's file name)
            instead of the hub file.
        weight (`float`, *optional*): its LoRA weight (default: the model's).
        hub_kwargs: for `load_lora_weights` (`local_files_only`, `cache_dir`, `token`, `revision`).

    Returns:
        The `SpeedModel` loaded (a speed model loaded before is replaced).

    Raises:
        FaceStudioError: an unknown name, an SDXL model on SD 1.5 or the reverse, PEFT missing.
        ModelFileError: the file cannot be found or does not fit the UNet.
    """
    from diffusers.utils import USE_PEFT_BACKEND

    from ..guidance.public_loading import activate_loras, remember_loras

    model = get_speed_model(model) if isinstance(model, str) else model
    sdxl = hasattr(pipe, "text_encoder_2")
    if model.sdxl != sdxl:
        raise FaceStudioError(f"speed model {model.name} is made for {'SDXL' if model.sdxl else 'SD 1.5'}; this "
                              f"pipeline is {'SDXL' if sdxl else 'SD 1.x'}")
    if not USE_PEFT_BACKEND:
        raise FaceStudioError("speed models load as PEFT LoRAs: `pip install 'peft>=0.17'`")
    unload_speed_model(pipe)
    source, name = _source(model, weights)
    kept = remember_loras(pipe, keep=lambda n: n != SPEED_ADAPTER)
    try:
        pipe.load_lora_weights(source, weight_name=name, adapter_name=SPEED_ADAPTER, **hub_kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        _delete(pipe, kept)
        raise ModelFileError(f"could not load the speed model {model.name} ({source}/{name}): "
                             f"{first_line(error)}") from error
    activate_loras(pipe, kept, {SPEED_ADAPTER: model.weight if weight is None else weight})
    pipe.speed_model = model
    logger.info("speed model %s loaded (%s): %d steps of %s", model.name, model.licence, model.steps,
                model.scheduler)
    return model


def unload_speed_model(pipe) -> None:
    """Delete the speed LoRA; the other LoRAs stay as they are (the UNet computes what it did before)."""
    from diffusers.utils import USE_PEFT_BACKEND

    from ..guidance.public_loading import remember_loras

    pipe.speed_model = None
    if USE_PEFT_BACKEND:
        _delete(pipe, remember_loras(pipe, keep=lambda n: n != SPEED_ADAPTER))


def _delete(pipe, kept) -> None:
    from ..guidance.public_loading import activate_loras

    if not any(SPEED_ADAPTER in names for names in pipe.get_list_adapters().values()):
        return
    activate_loras(pipe, kept, {})  # deactivated first: deleting an active adapter makes PEFT activate another
    pipe.delete_adapters([SPEED_ADAPTER])


def _source(model: SpeedModel, weights) -> tuple[str, str]:
    """`(folder or hub id, file name)` for `load_lora_weights`."""
    if weights is None:
        return model.file.repo, model.file.path
    path = Path(weights).expanduser()
    if path.is_dir():
        return str(path), model.file.filename
    if not path.is_file():
        raise ModelFileError(f"speed model weights {weights}: no such file or folder")
    return str(path.parent), path.name
