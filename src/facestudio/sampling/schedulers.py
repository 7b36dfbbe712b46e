"""Samplers by name: each a diffusers scheduler made with `from_config` from the base pipeline's own scheduler.

The names are the ones A1111 and ComfyUI users know (`euler-a` is A1111's "Euler a", ComfyUI's
`euler_ancestral`); the noise schedule (betas, prediction type, training steps) always comes from the base
model's scheduler config, so a sampler never changes what the model was trained for, only how it steps.
Euler ancestral is the default: the FaceStudio paper samples with it (25 steps).

Example:
    ```py
    >>> from facestudio.sampling.schedulers import make_scheduler
    >>> scheduler = make_scheduler("dpmpp-2m-karras", pipe.scheduler)   # a new object for one call
    >>> scheduler.set_timesteps(20)
    ```
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

from ..errors import FaceStudioError

#: The sampler used when none is named.
DEFAULT_SCHEDULER = "euler-a"
#: How the timesteps of a few steps are spread over the training range, by diffusers' names: "leading" (SD 1.5's
#: own), "trailing" (starts at the last training step; what few-step models are distilled for), "linspace".
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class Sampler:
    """One sampler: the diffusers class and the config entries that make it this sampler.

    Attributes:
        name (`str`): the name a request gives.
        class_name (`str`): the diffusers scheduler class (imported when one is made: the front ends check
            names before diffusers loads).
        options (`dict`): config entries set over the base scheduler's config (e.g. Karras sigmas).
        description (`str`): one line for listings and help texts.
    """

    name: str
    class_name: str
    options: dict = field(default_factory=dict)
    description: str = ""

    @property
    def scheduler_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.class_name)


SCHEDULERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("euler-a", "EulerAncestralDiscreteScheduler", {},
            "Euler ancestral (A1111 'Euler a'): the FaceStudio paper's sampler, 25 steps"),
    Sampler("dpmpp-2m-karras", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
            "DPM++ 2M with Karras sigmas (A1111 'DPM++ 2M Karras'): sharp in 20-30 steps"),
    # latents are not in [-1, 1]: clipping them (DDIM's default) is wrong for every latent diffusion model
    Sampler("ddim", "DDIMScheduler", {"clip_sample": False}, "DDIM (deterministic)"),
    Sampler("euler", "EulerDiscreteScheduler", {}, "Euler (deterministic)"),
    Sampler("unipc", "UniPCMultistepScheduler", {}, "UniPC: good in 10-20 steps"),
    Sampler("lcm", "LCMScheduler", {}, "LCM: for latent-consistency models and LoRAs, 2-8 steps at scale 1-2"),
    Sampler("tcd", "TCDScheduler", {}, "TCD: for TCD LoRAs, 2-8 steps at scale 1"),
)}


def check_scheduler(name: str, option: str = "scheduler") -> str:
    """`name` if it names a sampler, else a `FaceStudioError` listing the names (`option` as the front names it)."""
    if name not in SCHEDULERS:
        raise FaceStudioError(f"{option} {name!r}: not a known sampler; use one of {', '.join(SCHEDULERS)}")
    return name


def make_scheduler(name: str, base, *, timestep_spacing: str | None = None):
    """A new scheduler `name` with the noise schedule of `base` (the pipeline's scheduler); for one call.

    Args:
        name (`str`): a key of `SCHEDULERS`.
        base (`SchedulerMixin`): the base model's scheduler (its config gives betas, prediction type, ...).
        timestep_spacing (`str`, *optional*): one of `TIMESTEP_SPACINGS` over the base's (few-step models).

    Returns:
        A scheduler object of its own (schedulers keep step state, so each call needs one).
    """
    sampler = SCHEDULERS[check_scheduler(name)]
    options = dict(sampler.options)
    if timestep_spacing is not None and timestep_spacing != base.config.get("timestep_spacing"):
        options["timestep_spacing"] = timestep_spacing
    if type(base) is sampler.scheduler_class and all(base.config.get(k) == v for k, v in options.items()):
        return copy.deepcopy(base)  # the base itself: its exact config, bit for bit
    return sampler.scheduler_class.from_config(base.config, **options)


def step_kwargs(scheduler, generator) -> dict:
    """The generator for `scheduler.step` when that sampler draws noise (UniPC's step takes none)."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
