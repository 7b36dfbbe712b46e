"""One generation request: every default, every check that needs no model, the resolved size and the metadata.

`GenerationSettings` is built by every front end (the CLI, the server's request model, evaluation, Python
callers through the pipeline's keyword form) and handed to `pipe(settings)`. Its `validate(front)` is the one
set of input checks; a message names the setting the way the front end does (`--steps` on the command line,
`steps` in the HTTP API) through `FIELD_NAMES`, so the checks are written once.

Example:
    ```py
    >>> settings = GenerationSettings("a portrait", identities=(IdentityInput(photos=("me.jpg",)),), width=640)
    >>> settings.validate()          # FaceStudioError naming the bad setting, before any model work
    >>> out = pipe(settings.resolved(pipe.default_side), generator=torch.Generator().manual_seed(0))
    ```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import FaceStudioError
from .sampling.schedulers import DEFAULT_SCHEDULER, check_scheduler
from .regions import Box, Mask, as_call_source, as_region, check_sources, source_name

if TYPE_CHECKING:
    from .guidance import identity as idg

#: Denoising steps when none are given (FaceStudio samples with Euler ancestral, 25 steps).
DEFAULT_STEPS = 25
#: Text guidance scale when none is given; the reference scale defaults to the text scale.
DEFAULT_TEXT_SCALE = 7.5
#: Output side when none is given: SD 1.x's training size; with a scene image, its longest side.
DEFAULT_SIDE = 512
#: SDXL's training size (`FaceStudioXLPipeline.default_side`).
SDXL_DEFAULT_SIDE = 1024
#: FLUX.1's training size (`FaceStudioFluxPipeline.default_side`), its usual steps (FLUX.1-dev; schnell's preset
#: says 4) and FluxPipeline's distilled guidance (FLUX.1-dev; the PuLID-FLUX demo uses 4).
FLUX_DEFAULT_SIDE = SDXL_DEFAULT_SIDE
FLUX_DEFAULT_STEPS = 28
DEFAULT_DISTILLED_GUIDANCE = 3.5
#: Largest output side accepted.
MAX_SIDE = 4096
#: Largest seed: torch generators take 64-bit seeds, image i of a request uses seed + i.
MAX_SEED = 2**63 - 1

#: How each front end names a setting in its messages (a setting missing here keeps its field name).
FIELD_NAMES = {
    "python": {},
    "cli": {"prompt": "--prompt", "identities": "--identity", "mix": "--mix", "style_image": "--style",
            "style_strength": "--style-strength", "scene_image": "--scene", "scene_faces": "--scene-faces",
            "text_guidance_scale": "--text-scale", "reference_guidance_scale": "--reference-scale",
            "num_inference_steps": "--steps", "width": "--width", "height": "--height", "seed": "--seed",
            "count": "--num-images", "strength": "--strength", "face": "--face", "region": "--region",
            "regions": "--regions", "scheduler": "--scheduler", "speed": "--speed",
            "reference_guidance_start": "--reference-start", "distilled_guidance_scale": "--distilled-guidance",
            "start_step": "--start-step", "shortcut_scale": "--shortcut-scale", "decoder": "--decoder"},
    "api": {"num_inference_steps": "steps", "strength": "identities[].strength",
            "region": "identities[].region"},
    # the AUTOMATIC1111-compatible API (server/a1111): A1111's fields, and facestudio's extras in "facestudio"
    "a1111": {"identities": "alwayson_scripts.controlnet.args (identity units)", "mix": "facestudio.mix",
              "style_image": "the style unit's image", "style_strength": "the style unit's weight",
              "scene_image": "facestudio.scene_image", "scene_faces": "facestudio.scene_faces",
              "text_guidance_scale": "cfg_scale", "reference_guidance_scale": "facestudio.reference_scale",
              "num_inference_steps": "steps", "count": "batch_size * n_iter", "scheduler": "sampler_name",
              "strength": "alwayson_scripts.controlnet.args[].weight", "face": "facestudio.faces",
              "region": "alwayson_scripts.controlnet.args[].effective_region_mask", "regions": "facestudio.regions"},
}


@dataclass(frozen=True)
class IdentityInput:
    """One person to put in the image.

    Attributes:
        photos (`tuple`): photos of the person (PIL images, RGB arrays or paths); combined into one identity
            the way the identity adapter's kind reads several photos (pooled, or side by side for Portrait).
        identity (`Identity`, *optional*): an already encoded identity, instead of photos.
        region (`regions.Box` or `regions.Mask`, *optional*): where the person goes: a box in output pixels
            (also given as `(x0, y0, x1, y1)`), or a mask (also a PIL image or array, any size, resized to the
            output). None: placed by the settings' `regions` (default: the whole image for one identity, else
            the style image's people or a left-to-right split, or the matched face of the scene image).
        strength (`float`): how strongly the identity acts (0 turns it off).
        face (`int`, *optional*): which face of each photo to use (0 is the largest).
        name (`str`): a label for metadata and messages.
    """

    photos: tuple = ()
    identity: idg.Identity | None = None
    region: Box | Mask | None = None
    strength: float = 1.0
    face: int | None = None
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "region", as_region(self.region))


@dataclass(frozen=True)
class GenerationSettings:
    """Everything one request asks for, with every default.

    Attributes:
        prompt (`str` or `tuple[str]`): what to draw.
        negative_prompt (`str` or `tuple[str]`, *optional*): what to avoid.
        identities (`tuple[IdentityInput]`): the people (a photo or path alone stands for one person).
        mix (`tuple[float]`, *optional*): blend all identities into one face with these weights (sum 1).
        style_image (*optional*): a style or scene look to follow (a PIL image or a path; needs a style adapter).
        style_strength (`float`, defaults to 1.0): how strongly the style image acts.
        scene_image (*optional*): an image whose faces are replaced by the identities; the rest is kept.
        scene_faces (`tuple[int]`, *optional*): which scene faces (0 is the largest) get identity 1, 2, ...
        regions (`str` or a `regions` source, *optional*): what places every person: `"split"` (strips left to
            right), `"segment"` (the people of the scene or style image by selfie segmentation; needs the
            `segment` extra); None or `"auto"`: the people's own regions, the scene's faces, the style image's
            people or strips (see `regions.choose_source`).
        text_guidance_scale (`float`, defaults to `DEFAULT_TEXT_SCALE`): `g_text` of `guidance.cfg`.
        reference_guidance_scale (`float`, *optional*): `g_ref`; None: the text scale.
        reference_guidance_start (`float`, *optional*): FlashFace's start of reference guidance: at timesteps
            above it (the noisiest steps) the references join the prompt in ordinary text guidance, from it
            down `g_ref` acts (FlashFace uses 600 of 1000); None: `g_ref` at every step (`guidance.cfg`).
        shortcut_scale (`float`, *optional*): FaceID-PlusV2's weight of the CLIP face detail added to the id
            tokens (IP-Adapter's `s_scale`); None: the adapter's own (its preset's).
        decoder (`str`, defaults to `"full"`): `"full"` (the base model's VAE) or `"tiny"` (TAESD, `decoding.py`;
            the pipeline must have it loaded).
        num_inference_steps (`int`, defaults to `DEFAULT_STEPS`).
        width, height (`int`, *optional*): None until `resolved`: the pipeline's default side, or with a scene
            image and neither given, the scene's aspect ratio with that longest side.
        seed (`int`, *optional*): image i of the request uses seed + i (a call without a generator uses `seed`).
        count (`int`, defaults to 1): images a front end makes one by one (seeds seed, seed + 1, ...).
        num_images_per_prompt (`int`, defaults to 1): images of one pipeline call.
        output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
        scheduler (`str`, defaults to `"euler-a"`): the sampler by name (`sampling.schedulers.SCHEDULERS`).
        speed (`str`, defaults to `""`): a few-step speed model by name (`sampling.speed.SPEED_MODELS`) the
            pipeline has loaded; `""`: none.
        distilled_guidance_scale (`float`, *optional*): FLUX.1-dev's guidance input (a guidance-distilled model
            takes it instead of classifier-free guidance); None: the pipeline's default. Other models ignore it.
        start_step (`int`, defaults to 0): the first denoising step the identities act in (PuLID-FLUX's
            `start_step`: later gives more room to the prompt, earlier more likeness). FLUX pipeline only.
    """

    prompt: str | tuple[str, ...]
    negative_prompt: str | tuple[str, ...] | None = None
    identities: tuple[IdentityInput, ...] = ()
    mix: tuple[float, ...] | None = None
    style_image: Any = None
    style_strength: float = 1.0
    scene_image: Any = None
    scene_faces: tuple[int, ...] | None = None
    regions: Any = None
    text_guidance_scale: float = DEFAULT_TEXT_SCALE
    reference_guidance_scale: float | None = None
    num_inference_steps: int = DEFAULT_STEPS
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    count: int = 1
    num_images_per_prompt: int = 1
    output_type: str = "pil"
    scheduler: str = DEFAULT_SCHEDULER
    speed: str = ""
    reference_guidance_start: float | None = None
    distilled_guidance_scale: float | None = None
    start_step: int = 0
    shortcut_scale: float | None = None
    decoder: str = "full"

    def __post_init__(self):
        people = tuple(p if isinstance(p, IdentityInput) else IdentityInput(photos=(p,)) for p in self.identities)
        object.__setattr__(self, "identities", people)
        for name in ("mix", "scene_faces"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("prompt", "negative_prompt"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    # ------------------------------------------------------------------ derived values

    def prompts(self) -> list[str]:
        """The prompts as a list (diffusers' `encode_prompt` takes lists beside lists)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def negative_prompts(self) -> list[str] | None:
        """One negative prompt per prompt (None: none given)."""
        negative = self.negative_prompt
        return None if negative is None else [negative] * len(self.prompts()) if isinstance(negative, str) \
            else list(negative)

    def generator(self):
        """A CPU `torch.Generator` seeded with `seed` (None without a seed): image i of a request, with seed + i."""
        if self.seed is None:
            return None
        import torch  # here: the front ends read settings before torch is needed

        return torch.Generator().manual_seed(self.seed)

    @property
    def reference_scale(self) -> float:
        """`g_ref` as used: the reference scale, else the text scale."""
        return self.text_guidance_scale if self.reference_guidance_scale is None else self.reference_guidance_scale

    @property
    def slots(self) -> int:
        """How many people the image shows: one with `mix`, else one per identity."""
        return 1 if self.mix is not None else len(self.identities)

    def output_size(self, default_side: int, scene_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """`(width, height)`: as given, else `default_side`; with a scene of `scene_size` `(w, h)` and no size
        given, the scene's shape with that longest side (a multiple of 8)."""
        if scene_size is not None and self.width is None and self.height is None:
            scale = default_side / max(scene_size)
            return tuple(max(8, round(side * scale / 8) * 8) for side in scene_size)
        return self.width or default_side, self.height or default_side

    def resolved(self, default_side: int, scene_size: tuple[int, int] | None = None) -> GenerationSettings:
        """These settings with the output size (see `output_size`) and the reference scale filled in."""
        width, height = self.output_size(default_side, scene_size)
        return replace(self, width=width, height=height, reference_guidance_scale=self.reference_scale)

    # ------------------------------------------------------------------ the checks, once

    def validate(self, front: str = "python") -> GenerationSettings:
        """Raise `FaceStudioError` on the first bad setting, named as `front` (`"python"`, `"cli"`, `"api"`)
        names it; returns the settings. Checks what needs no model; the pipeline adds the loaded adapters'."""
        names = FIELD_NAMES[front]

        def name(key: str) -> str:
            return names.get(key, key)

        def fail(message: str):
            raise FaceStudioError(message)

        prompts = (self.prompt,) if isinstance(self.prompt, str) else self.prompt
        if not isinstance(prompts, tuple) or not all(isinstance(p, str) for p in prompts):
            fail(f"{name('prompt')} must be a string or a list of strings")
        for key in ("width", "height"):
            side = getattr(self, key)
            if side is not None and (side % 8 or not 8 <= side <= MAX_SIDE):
                fail(f"{name(key)} {side}: must be a multiple of 8 between 8 and {MAX_SIDE}")
        for key in ("num_inference_steps", "count", "num_images_per_prompt"):
            if getattr(self, key) < 1:
                fail(f"{name(key)} {getattr(self, key)}: must be at least 1")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - (self.count - 1):
            fail(f"{name('seed')} {self.seed}: must be between 0 and 2**63 - 1 - (number of images - 1)")
        if self.start_step < 0:
            fail(f"{name('start_step')} {self.start_step}: must be at least 0")
        scales = [("text_guidance_scale", self.text_guidance_scale),
                  ("distilled_guidance_scale", self.distilled_guidance_scale),
                  ("reference_guidance_scale", self.reference_guidance_scale),
                  ("style_strength", self.style_strength),
                  ("reference_guidance_start", self.reference_guidance_start),
                  ("shortcut_scale", self.shortcut_scale), *(("strength", p.strength) for p in self.identities)]
        for key, value in scales:
            if value is not None and not (math.isfinite(value) and value >= 0):
                fail(f"{name(key)} {value}: must be a finite number >= 0")
        for i, person in enumerate(self.identities):
            if person.identity is None and not person.photos:
                fail(f"{name('identities')} {i + 1} has neither photos nor an encoded identity")
            if person.face is not None and person.face < 0:
                fail(f"{name('face')} {person.face}: faces are numbered from 0 (the largest)")
        count = len(self.identities)
        if self.mix is not None:
            if count < 2 or len(self.mix) != count:
                fail(f"{name('mix')} needs one weight per identity (at least two); got {len(self.mix)} weight(s) "
                     f"for {count} identities")
            if any(not math.isfinite(w) or w < 0 for w in self.mix) or not math.isclose(sum(self.mix), 1.0,
                                                                                          abs_tol=1e-6):
                fail(f"{name('mix')} {','.join(f'{w:g}' for w in self.mix)}: weights must be >= 0 and sum to 1")
            if len({p.strength for p in self.identities}) > 1:
                fail(f"with {name('mix')} the identities become one face: give them one {name('strength')}")
        if self.scene_image is not None and not count:
            fail(f"{name('scene_image')} needs at least one identity to put into it")
        check_sources([p.region for p in self.identities], as_call_source(self.regions, front),
                      scene=self.scene_image is not None, style=self.style_image is not None,
                      scene_faces=self.scene_faces, where=front)
        if self.scene_faces is not None and (len(self.scene_faces) != self.slots or any(i < 0 for i in
                                                                                        self.scene_faces)):
            fail(f"{name('scene_faces')} {list(self.scene_faces)}: give {self.slots} face number(s) >= 0 (0 is "
                 "the scene's largest face), one per " + ("mixed face" if self.mix else "identity"))
        if not isinstance(self.scheduler, str):
            fail(f"{name('scheduler')} must be a sampler name")
        check_scheduler(self.scheduler, name("scheduler"))
        if self.speed:
            from .sampling.speed import get_speed_model  # here: it reads the presets, which read this module

            get_speed_model(self.speed, name("speed"))
        if self.decoder not in ("full", "tiny"):
            fail(f"{name('decoder')} {self.decoder!r}: 'full' (the model's VAE) or 'tiny' (TAESD)")
        if self.output_type not in ("pil", "np", "pt", "latent"):
            fail(f"output_type {self.output_type!r}: one of 'pil', 'np', 'pt', 'latent'")
        return self

    # ------------------------------------------------------------------ what the images record

    def metadata(self) -> dict:
        """The settings every image records, in the same keys wherever it is made (front ends add their own:
        the command, the models, how identities and images are named)."""
        return {
            "prompt": self.prompt if isinstance(self.prompt, str) else
            list(self.prompt) if len(self.prompt) > 1 else self.prompt[0],
            "negative_prompt": self.negative_prompt, "mix": None if self.mix is None else list(self.mix),
            "style_strength": self.style_strength if self.style_image is not None else None,
            "scene_faces": None if self.scene_faces is None else list(self.scene_faces),
            "regions": source_name(as_call_source(self.regions)),
            "steps": self.num_inference_steps, "text_guidance_scale": self.text_guidance_scale,
            "reference_guidance_scale": self.reference_scale, "width": self.width, "height": self.height,
            "num_images": self.count, "scheduler": self.scheduler, "speed": self.speed or None,
            "reference_guidance_start": self.reference_guidance_start, "shortcut_scale": self.shortcut_scale,
            "decoder": self.decoder,
        }
