"""`FaceStudioPipeline` (Stable Diffusion 1.x / 2.x) and `FaceStudioXLPipeline` (SDXL): identity-preserving
generation.

Built on diffusers' Stable Diffusion pipelines and IP-Adapter machinery: adapters load through
`load_ip_adapter` (facestudio's own, or the public IP-Adapter / FaceID family; `adapter_loading.py`), each held
as a kind object that says how its inputs become tokens (`guidance/kinds/`), identities act through
`IPAdapterAttnProcessor2_0` with per-identity masks (facestudio's `RegionIPAdapterAttnProcessor` only picks
each layer's mask), and guidance has separate text and reference scales. Everything a call needs travels in
its arguments and locals (prompt encoding and SDXL's float32 VAE run are serialised), so two calls may run at once.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .adapter_loading import GUIDANCE_ENCODERS, AdapterLoadingMixin
from .attention import LayerMasks, RegionMasks, side_by_side
from .errors import FaceStudioError
from .guidance import identity as idg
from .guidance.cfg import combine_guidance, combine_two_way
from .imaging import load_image
from .regions import (Box, Mask, SceneEdit, as_call_source, as_region, check_sources, choose_source,
                      resolve_regions, source_name)
from .regions.sources import SceneFaces, Segmented, StylePeople

logger = logging.getLogger(__name__)

#: Largest output side accepted.
MAX_SIDE = 4096
#: Output side when none is given (SD 1.x's training size; SDXL's is 1024); with a scene image, its longest side.
DEFAULT_SIDE = 512


@dataclass(frozen=True)
class IdentityInput:
    """One person to put in the image.

    Attributes:
        photos (`tuple`): photos of the person (PIL images, RGB arrays or paths); combined into one identity
            the way the identity adapter's kind reads several photos (pooled, or side by side for Portrait).
        identity (`Identity`, *optional*): an already encoded identity, instead of photos.
        region (`regions.Box` or `regions.Mask`, *optional*): where the person goes: a box in output pixels
            (also given as `(x0, y0, x1, y1)`), or a mask (also a PIL image or array, any size, resized to the
            output). None: placed by the call's `regions` (default: the whole image for one identity, else
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


@dataclass
class FaceStudioPipelineOutput(BaseOutput):
    """Images and the settings that made them (for metadata)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    settings: dict = field(default_factory=dict)


class FaceStudioMixin(AdapterLoadingMixin):
    """Everything of facestudio's pipelines but the text conditioning: identities, regions, the call (and,
    from `AdapterLoadingMixin`, the adapters).

    Mixed into diffusers' Stable Diffusion pipelines (`FaceStudioPipeline` for SD 1.x/2.x, `FaceStudioXLPipeline`
    for SDXL), which give the models, the prompt encoder and the schedulers.
    """

    #: Output side when none is given: the base model's training size.
    default_side = DEFAULT_SIDE
    # A tokenizer keeps its padding setting between calls, and diffusers' encode_prompt tokenizes twice with
    # different ones ("max_length", then "longest" for its truncation warning): two calls encoding at once can
    # get each other's padding (77 vs 8 tokens, a size mismatch). Prompt encoding is one step under this lock.
    _TEXT_LOCK = threading.Lock()

    # ------------------------------------------------------------------ steps of a call

    def check_call(self, prompt, identities: list[IdentityInput], mix, style_image, scene_image, height, width,
                   num_inference_steps, text_guidance_scale, reference_guidance_scale, num_images_per_prompt,
                   scene_faces, regions=None) -> None:
        """Reject every bad combination before any tensor work."""
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt)):
            raise FaceStudioError("prompt must be a string or a list of strings")
        for name, side in (("height", height), ("width", width)):
            if side % 8 or not 8 <= side <= MAX_SIDE:
                raise FaceStudioError(f"{name} {side} must be a multiple of 8 between 8 and {MAX_SIDE}")
        if num_inference_steps < 1:
            raise FaceStudioError(f"steps must be at least 1, got {num_inference_steps}")
        if num_images_per_prompt < 1:
            raise FaceStudioError(f"number of images must be at least 1, got {num_images_per_prompt}")
        for name, value in (("text guidance scale", text_guidance_scale),
                            ("reference guidance scale", reference_guidance_scale)):
            if not np.isfinite(value) or value < 0:
                raise FaceStudioError(f"{name} must be a finite number >= 0, got {value}")
        if identities and self._adapter("identity") is None:
            raise FaceStudioError("identities given, but no identity adapter is loaded (load_adapters(identity=...))")
        if style_image is not None and self._adapter("style") is None:
            raise FaceStudioError("a style image given, but no style adapter is loaded (load_adapters(style=...))")
        for i, person in enumerate(identities):
            if person.identity is None and not person.photos:
                raise FaceStudioError(f"identity {i + 1} has neither photos nor an encoded identity")
            if not np.isfinite(person.strength) or person.strength < 0:
                raise FaceStudioError(f"identity {i + 1}: strength must be >= 0, got {person.strength}")
        if mix is not None:
            if len(mix) != len(identities) or len(identities) < 2:
                raise FaceStudioError(f"mix needs one weight per identity (at least two); got {len(mix)} weights "
                                      f"for {len(identities)} identities")
            if any(w < 0 for w in mix) or not np.isclose(sum(mix), 1.0, atol=1e-6):
                raise FaceStudioError(f"mix weights must be >= 0 and sum to 1, got {list(mix)}")
        check_sources([p.region for p in identities], as_call_source(regions), scene=scene_image is not None,
                      style=style_image is not None, scene_faces=scene_faces)
        if scene_image is not None and not identities:
            raise FaceStudioError("a scene image needs at least one identity to put into it")

    def encode_identities(self, identities: list[IdentityInput], mix) -> list[idg.Identity]:
        """Photos -> identities (several photos pooled); mixed into one when `mix` is given."""
        encoded = []
        for i, person in enumerate(identities):
            if person.identity is not None:
                encoded.append(person.identity)
                continue
            name = person.name or f"identity {i + 1}"
            photos, faces = idg.photos_and_faces(self._analyzer(), person.photos, person.face, name)
            encoded.append(self.encode_photos(photos, faces, name))
        if mix is not None:
            encoded = [idg.mix(encoded, mix, name="mix of " + ", ".join(i.name for i in encoded))]
        return encoded

    def encode_photos(self, photos: Sequence[np.ndarray], faces: Sequence, name: str = "") -> idg.Identity:
        """One person's `Identity` from RGB arrays and the detected face to use in each, encoded the way the
        loaded identity adapter's kind reads it."""
        adapter = self._adapter("identity")
        if adapter is None:
            raise FaceStudioError("no identity adapter is loaded: identities cannot be encoded")
        return adapter.adapter_kind.encode_photos(self._analyzer(), self.image_encoder_for("identity"), photos, faces,
                                                  name)

    def identity_signature(self) -> str | None:
        """What an `Identity` must record as its recogniser to fit the loaded identity adapter (None: no adapter)."""
        adapter = self._adapter("identity")
        return None if adapter is None else adapter.adapter_kind.signature

    def identity_tokens(self, identities: list[idg.Identity], batch: int, three_way: bool) -> torch.Tensor:
        """`[rows * batch, N, T, D]` tokens: "no reference" rows first, identities in the last."""
        adapter = self._adapter("identity")
        projection, kind = self._projection(adapter), adapter.adapter_kind
        null = kind.tokens(projection, adapter.null_identity)
        real = [kind.tokens(projection, i) for i in identities] or [null]
        null, *real = side_by_side([null, *real])
        real = torch.stack(real)
        nulls = null[None].expand(real.shape[0], -1, -1)
        rows = [nulls, nulls, real] if three_way else [nulls, real]
        return torch.cat([r[None].expand(batch, -1, -1, -1) for r in rows])

    def style_tokens(self, style_image, batch: int, three_way: bool) -> torch.Tensor:
        """`[rows * batch, 1, T, D]` style tokens ("no style" = the projection of a zero embedding)."""
        adapter = self._adapter("style")
        projection, kind, encoder = self._projection(adapter), adapter.adapter_kind, self.image_encoder_for("style")
        null = kind.image_tokens(projection, encoder, None)
        real = null if style_image is None else kind.image_tokens(projection, encoder, style_image)
        rows = [null, null, real] if three_way else [null, real]
        return torch.cat([r[None, None].expand(batch, -1, -1, -1) for r in rows])

    def place_people(self, people: list[IdentityInput], count: int, height: int, width: int, regions,
                     style: PIL.Image.Image | None, scene: PIL.Image.Image | None,
                     scene_faces: Sequence[int] | None) -> tuple[np.ndarray, SceneEdit | None]:
        """Per-person masks `[count, height, width]` from the call's region source (`regions.choose_source`),
        and with a scene image, the `SceneEdit` that regenerates its chosen faces and keeps the rest."""
        scene_array = None if scene is None else np.asarray(scene.resize((width, height), PIL.Image.LANCZOS))
        source = choose_source([p.region for p in people], count, as_call_source(regions), scene=scene is not None,
                               style=style is not None, scene_faces=scene_faces)
        needs_style = scene is None and isinstance(source, (StylePeople, Segmented))
        style_array = np.asarray(style.resize((width, height), PIL.Image.LANCZOS)) if needs_style and style else None
        analyzer = self._analyzer() if scene is not None or style_array is not None else None
        masks = resolve_regions(source, count, (width, height), analyzer=analyzer, scene=scene_array,
                                style=style_array)
        if scene_array is None:
            return masks, None
        faces = masks if isinstance(source, SceneFaces) else \
            resolve_regions(SceneFaces(source.chosen), count, (width, height), analyzer=analyzer, scene=scene_array)
        return masks, SceneEdit.from_face_masks(scene_array, faces)

    def region_masks(self, masks: np.ndarray, height: int, width: int) -> torch.Tensor:
        """Per-person masks `[N, height, width]` (from `regions.resolve_regions`) at the latent size
        `[N, height // 8, width // 8]`."""
        latent = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        small = [cv2.resize(m, (latent[1], latent[0]), interpolation=cv2.INTER_AREA) for m in masks]
        return torch.from_numpy(np.clip(np.stack(small), 0.0, 1.0))

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        identities: Sequence[IdentityInput] | None = None,
        mix: Sequence[float] | None = None,
        style_image: PIL.Image.Image | str | None = None,
        style_strength: float = 1.0,
        scene_image: PIL.Image.Image | str | None = None,
        scene_faces: Sequence[int] | None = None,
        regions: str | None = None,
        text_guidance_scale: float = 7.5,
        reference_guidance_scale: float | None = None,
        num_inference_steps: int = 25,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        return_dict: bool = True,
    ):
        """Generate images of the given people.

        Args:
            prompt (`str` or `list[str]`): what to draw.
            negative_prompt (`str` or `list[str]`, *optional*): what to avoid.
            identities (`Sequence[IdentityInput]`, *optional*): the people.
            mix (`Sequence[float]`, *optional*): blend all identities into one face with these weights (sum 1).
            style_image (*optional*): a style or scene look to follow (needs a style adapter).
            style_strength (`float`, defaults to 1.0): how strongly the style image acts.
            scene_image (*optional*): an image whose faces are replaced by the identities; the rest is kept.
            scene_faces (`Sequence[int]`, *optional*): which scene faces (0 is the largest) get identity 1, 2, ...
            regions (`str` or a `regions` source, *optional*): what places every person: `"split"` (strips left
                to right), `"segment"` (the people of the scene or style image by selfie segmentation; needs
                the `segment` extra); None or `"auto"`: the people's own regions, the scene's faces, the style
                image's people or strips (see `regions.choose_source`).
            text_guidance_scale (`float`, defaults to 7.5): `g_text` of `guidance.cfg.combine_guidance`.
            reference_guidance_scale (`float`, *optional*): `g_ref`; defaults to `text_guidance_scale`.
            num_inference_steps (`int`, defaults to 25), height, width (`int`, default `default_side`: 512, SDXL
                1024; with a scene image and neither given, the scene's aspect ratio with that longest side).
            generator (`torch.Generator` or a list, one per image): for reproducible images.
            num_images_per_prompt (`int`, defaults to 1).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            callback_on_step_end (`Callable`, *optional*): `f(step, total)` called after every step; raising
                from it stops the run (how the server cancels jobs).

        Returns:
            `FaceStudioPipelineOutput` with `images` and the `settings` used.
        """
        # 1. Check inputs
        people = [p if isinstance(p, IdentityInput) else IdentityInput(photos=(p,)) for p in identities or ()]
        reference_guidance_scale = text_guidance_scale if reference_guidance_scale is None else reference_guidance_scale
        scene = None if scene_image is None else load_image(scene_image, min_side=32, name="scene image")
        if scene is not None and height is None and width is None:  # the scene's shape, at the default size
            scale = self.default_side / max(scene.size)
            height, width = (max(8, round(side * scale / 8) * 8) for side in (scene.height, scene.width))
        height, width = height or self.default_side, width or self.default_side
        self.check_call(prompt, people, mix, style_image, scene, height, width, num_inference_steps,
                        text_guidance_scale, reference_guidance_scale, num_images_per_prompt, scene_faces, regions)
        style = None if style_image is None else load_image(style_image, name="style image")
        device = self._execution_device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = None if negative_prompt is None else \
            [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        batch = len(prompts) * num_images_per_prompt

        # 2. Encode the prompt (the rows of guidance are set once the references are known)
        three_way = bool(people) or style is not None  # a reference is given: (no text), (text), (text + ref)
        text, text_added = self.encode_text(prompts, negatives, device, num_images_per_prompt,
                                            3 if three_way else 2, height, width)

        # 3. Faces: photos -> identities; region sources -> per-person masks (and the scene's faces to redo)
        encoded = self.encode_identities(people, mix)
        count = max(len(encoded), 1)
        full_masks, edit = self.place_people(people, count, height, width, regions, style, scene, scene_faces)

        # 4-6. Identity tokens, style tokens, region masks: computed once for the whole call
        tokens, region_masks = [], []
        strengths = [p.strength for p in people] if mix is None else [people[0].strength if people else 1.0]
        for adapter in self.facestudio_adapters:
            if adapter.kind == "identity":
                tokens.append(self.identity_tokens(encoded, batch, three_way))
                masks = self.region_masks(full_masks, height, width)
                region_masks.append(RegionMasks(masks, tuple(strengths) if encoded else (0.0,)))
            else:
                tokens.append(self.style_tokens(style, batch, three_way))
                region_masks.append(RegionMasks.full(1, style_strength if style is not None else 0.0))
        tokens = [t.to(device=device, dtype=self.unet.dtype) for t in tokens]
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        unet_kwargs = {"added_cond_kwargs": text_added} if text_added else {}
        if tokens:
            unet_kwargs = {"added_cond_kwargs": {**text_added, "image_embeds": tokens},
                           "cross_attention_kwargs": {"ip_adapter_masks": LayerMasks(tuple(region_masks), latent_size)}}

        # 7. Timesteps and latents (a scheduler of this call's own: schedulers keep step state)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, self.unet.config.in_channels, *latent_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=text.dtype)
        latents = latents * scheduler.init_noise_sigma
        scene_blend = None if edit is None else edit.latents(self.encode_pixels, batch, generator, latents.dtype,
                                                              device)

        # 8. Denoising loop
        timesteps = scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_input = scheduler.scale_model_input(torch.cat([latents] * (3 if three_way else 2)), t)
                eps = self.unet(model_input, t, encoder_hidden_states=text, return_dict=False, **unet_kwargs)[0]
                eps = combine_guidance(eps, text_guidance_scale, reference_guidance_scale) if three_way \
                    else combine_two_way(eps, text_guidance_scale)
                latents = scheduler.step(eps, t, latents, generator=generator, return_dict=False)[0]
                if scene_blend is not None:  # keep the scene outside the faces: it re-enters at the next noise level
                    latents = scene_blend.keep_scene(latents, scheduler, timesteps, i)
                progress.update()
                if callback_on_step_end is not None:
                    callback_on_step_end(i + 1, len(timesteps))

        # 9. Decode, paste the scene's own pixels back outside the faces
        settings = {
            "prompt": prompts if len(prompts) > 1 else prompts[0], "negative_prompt": negative_prompt,
            "identities": [i.name for i in encoded], "strengths": strengths, "mix": list(mix) if mix else None,
            "style_image": style is not None, "style_strength": style_strength, "scene_image": scene is not None,
            "regions": source_name(as_call_source(regions)),
            "text_guidance_scale": text_guidance_scale, "reference_guidance_scale": reference_guidance_scale,
            "steps": num_inference_steps, "height": height, "width": width, "scheduler": type(scheduler).__name__,
        }
        if output_type == "latent":
            return FaceStudioPipelineOutput(latents, settings) if return_dict else (latents,)
        image = self.decode_latents_to_pixels(latents)
        image = self.image_processor.postprocess(image, output_type="np")
        if edit is not None:
            image = edit.paste(image)
        if output_type == "pil":
            image = self.image_processor.numpy_to_pil(image)
        elif output_type == "pt":
            image = torch.from_numpy(image).permute(0, 3, 1, 2)
        self.maybe_free_model_hooks()
        return FaceStudioPipelineOutput(image, settings) if return_dict else (image,)

    def encode_text(self, *args) -> tuple[torch.Tensor, dict]:
        """`text_conditioning(*args)` under the prompt-encoding lock (see `_TEXT_LOCK`); safe from any thread."""
        with self._TEXT_LOCK:
            return self.text_conditioning(*args)

    def text_conditioning(self, prompts: list[str], negatives: list[str] | None, device, num_images_per_prompt: int,
                          rows: int, height: int, width: int) -> tuple[torch.Tensor, dict]:
        """The UNet's text inputs for the guidance rows `[no text, text, text...]`: `(encoder_hidden_states,
        added_cond_kwargs entries)`. Stable Diffusion 1.x/2.x needs no added conditions."""
        positive, negative = self.encode_prompt(prompts, device, num_images_per_prompt, True, negatives)
        return torch.cat([negative] + [positive] * (rows - 1)), {}

    def decode_latents_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run_vae(lambda vae, x: vae.decode(x, return_dict=False)[0], latents / self.vae.config.scaling_factor)

    def run_vae(self, work: Callable, tensor: torch.Tensor):
        """`work(vae, tensor)` with the tensor in the VAE's dtype (SDXL overrides this to run in float32)."""
        return work(self.vae, tensor.to(self.vae.dtype))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents (the mode of the VAE's posterior)."""
        mode = self.run_vae(lambda vae, x: vae.encode(x).latent_dist.mode(), pixels)
        return mode * self.vae.config.scaling_factor


class FaceStudioPipeline(FaceStudioMixin, StableDiffusionPipeline):
    """Stable Diffusion with identity and style adapters, per-identity regions and text/reference guidance.

    Build it from a base model with `facestudio.models.load_base_pipeline(name, FaceStudioPipeline)`, then
    `load_adapters(identity=..., style=...)`.

    Example:
        ```py
        >>> from facestudio.models import load_base_pipeline
        >>> from facestudio.pipeline import FaceStudioPipeline, IdentityInput
        >>> pipe = load_base_pipeline("tiny", FaceStudioPipeline)
        >>> pipe.load_adapters(identity="path/to/adapter")
        >>> out = pipe("a portrait, oil painting", identities=[IdentityInput(photos=("me.jpg",))],
        ...            num_inference_steps=25, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].save("me-painted.png")
        ```
    """

    # the adapters' CLIP encoders run after the text encoder, before the UNet
    model_cpu_offload_seq = "text_encoder->image_encoder->identity_image_encoder->style_image_encoder->unet->vae"
    _optional_components = [*StableDiffusionPipeline._optional_components, *GUIDANCE_ENCODERS]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True, identity_image_encoder=None,
                 style_image_encoder=None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self._init_guidance(identity_image_encoder, style_image_encoder)


class FaceStudioXLPipeline(FaceStudioMixin, StableDiffusionXLPipeline):
    """`FaceStudioPipeline` for SDXL: the same adapters, identities, regions, mixing and guidance scales.

    SDXL's UNet also takes the pooled text embedding and the size conditioning ("time ids"); they are built
    here per guidance row. Public SDXL adapters load with `load_public_adapters` (see the SDXL presets).
    """

    default_side = 1024
    _VAE_UPCAST_LOCK = threading.Lock()
    model_cpu_offload_seq = ("text_encoder->text_encoder_2->image_encoder->identity_image_encoder->"
                             "style_image_encoder->unet->vae")
    _optional_components = [*StableDiffusionXLPipeline._optional_components, *GUIDANCE_ENCODERS]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None, identity_image_encoder=None, style_image_encoder=None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self._init_guidance(identity_image_encoder, style_image_encoder)

    def text_conditioning(self, prompts, negatives, device, num_images_per_prompt, rows, height, width):
        positive, negative, pooled, negative_pooled = self.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=True, negative_prompt=negatives)
        projection_dim = self.text_encoder_2.config.projection_dim if self.text_encoder_2 is not None \
            else int(pooled.shape[-1])
        time_ids = self._get_add_time_ids((height, width), (0, 0), (height, width), dtype=positive.dtype,
                                          text_encoder_projection_dim=projection_dim).to(device)
        added = {"text_embeds": torch.cat([negative_pooled] + [pooled] * (rows - 1)),
                 "time_ids": time_ids.repeat(positive.shape[0] * rows, 1)}
        return torch.cat([negative] + [positive] * (rows - 1)), added

    def run_vae(self, work, tensor):
        # SDXL's VAE overflows in float16 (its config says force_upcast): it runs in float32. The VAE is
        # shared, so the dtype check, the cast and the work are one step under the lock: a concurrent call
        # never sees it half cast.
        if not getattr(self.vae.config, "force_upcast", False):
            return super().run_vae(work, tensor)
        with self._VAE_UPCAST_LOCK:
            dtype = self.vae.dtype
            self.vae.to(torch.float32)
            try:
                return work(self.vae, tensor.float())
            finally:
                self.vae.to(dtype)
