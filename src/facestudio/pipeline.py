"""`FaceStudioPipeline` (SD 1.x / 2.x) and the steps of a call it shares with `FaceStudioXLPipeline` (`pipeline_xl.py`).

Built on diffusers' Stable Diffusion pipelines and IP-Adapter machinery: adapters load through `load_ip_adapter`
(facestudio's own, or the public IP-Adapter / FaceID family; `adapter_loading.py`), each held as a kind object that
says how its inputs become tokens (`guidance/kinds/`), identities act through `IPAdapterAttnProcessor2_0` with
per-identity masks (facestudio's `RegionIPAdapterAttnProcessor` only picks each layer's mask), and guidance has
separate text and reference scales (`guidance/cfg.py`). A call takes one `GenerationSettings` (`request.py`);
everything it needs travels in its arguments and locals (prompt encoding and SDXL's float32 VAE run are
serialised), so two calls may run at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import cv2
import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .adapter_loading import GUIDANCE_ENCODERS, AdapterLoadingMixin
from .attention import LayerMasks, RegionMasks, side_by_side
from .decoding import preview_image, tiny_decode
from .errors import FaceStudioError
from .guidance import identity as idg
from .guidance.cfg import GuidancePlan, GuidanceRows
from .guidance.kinds import kind_for
from .imaging import load_image
from .regions import SceneEdit, as_call_source, choose_source, resolve_regions
from .regions.sources import SceneFaces, Segmented, StylePeople
from .sampling.schedulers import DEFAULT_SCHEDULER, make_scheduler, step_kwargs
from .sampling.speed import loaded_speed_model
from .request import DEFAULT_SIDE, DEFAULT_STEPS, DEFAULT_TEXT_SCALE, GenerationSettings, IdentityInput

logger = logging.getLogger(__name__)


@dataclass
class FaceStudioPipelineOutput(BaseOutput):
    """Images, the settings that made them, and their metadata (`labels.schema`, with the AI-generated label).

    `save(path)` writes an image with every label (`labels.write`): `out.save("me.png")`, not
    `out.images[0].save(...)`, which writes the pixels alone.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    settings: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def image_metadata(self, index: int = 0) -> dict:
        """The metadata of image `index` (its own size; its place in the batch when there are several)."""
        from .imaging import ai_generated_metadata

        image = self.images[index]
        width, height = image.size if isinstance(image, PIL.Image.Image) else (None, None)
        extra = {"batch_index": index} if len(self.images) > 1 else {}
        return ai_generated_metadata({**self.metadata, **extra, "width": width or self.metadata.get("width"),
                                      "height": height or self.metadata.get("height")})

    def save(self, path, index: int = 0, *, overwrite: bool = True):
        """Write image `index` to `path` (.png, .jpg or .jpeg, .webp) with its labels; returns the `Path`."""
        from .labels.write import save_labelled

        image = self.images[index]
        if not isinstance(image, PIL.Image.Image):
            raise FaceStudioError("save() writes PIL images: call the pipeline with output_type='pil'")
        return save_labelled(image, path, self.image_metadata(index), overwrite=overwrite)


class FaceStudioMixin(AdapterLoadingMixin):
    """Everything of facestudio's pipelines but the text conditioning: identities, regions, the call (and, from
    `AdapterLoadingMixin`, the adapters). Mixed into diffusers' Stable Diffusion pipelines (`FaceStudioPipeline`,
    `FaceStudioXLPipeline`), which give the models, the prompt encoder and the schedulers."""

    #: Output side when none is given: the base model's training size.
    default_side = DEFAULT_SIDE
    # A tokenizer keeps its padding setting between calls, and diffusers' encode_prompt tokenizes twice with
    # different ones ("max_length", then "longest" for its truncation warning): two calls encoding at once can
    # get each other's padding (77 vs 8 tokens, a size mismatch). Prompt encoding is one step under this lock.
    _TEXT_LOCK = threading.Lock()

    # ------------------------------------------------------------------ steps of a call

    def check_adapters(self, settings: GenerationSettings) -> None:
        """Refuse settings that need an adapter this pipeline has not loaded (the rest: `settings.validate`)."""
        if settings.identities and self._adapter("identity") is None:
            raise FaceStudioError("identities given, but no identity adapter is loaded (load_adapters(identity=...))")
        if settings.style_image is not None and self._adapter("style") is None:
            raise FaceStudioError("a style image given, but no style adapter is loaded (load_adapters(style=...))")
        if settings.shortcut_scale is not None and settings.identities and self.shortcut_scale() is None:
            raise FaceStudioError("a shortcut scale given, but the identity adapter has no shortcut (FaceID-PlusV2 "
                                  "and facestudio's own adapters have one)")
        if settings.decoder == "tiny" and self.tiny_vae is None:
            raise FaceStudioError("decoder 'tiny' asked for, but no tiny decoder is loaded "
                                  "(decoding.load_tiny_decoder)")
        loaded = loaded_speed_model(self)
        if settings.speed and (loaded is None or loaded.name != settings.speed):
            raise FaceStudioError(f"speed model {settings.speed!r} asked for, but "
                                  + (f"{loaded.name!r} is loaded" if loaded else "none is loaded")
                                  + " (sampling.speed.load_speed_model)")

    def encode_identities(self, identities: list[IdentityInput], mix) -> list[idg.Identity]:
        """Photos -> identities (several photos pooled); mixed into one when `mix` is given."""
        encoded = []
        for i, person in enumerate(identities):
            if person.identity is not None:
                encoded.append(person.identity)
                continue
            name = person.name or f"identity {i + 1}"
            photos, faces = idg.photos_and_faces(self.get_face_analyzer(), person.photos, person.face, name)
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
        return adapter.adapter_kind.encode_photos(self.get_face_analyzer(), self.image_encoder_for("identity"), photos,
                                                  faces, name)

    def shortcut_scale(self) -> float | None:
        """The identity adapter's shortcut scale (FaceID-PlusV2's, facestudio's own); None: it has no shortcut."""
        adapter = self._adapter("identity")
        kind = None if adapter is None else adapter.adapter_kind
        if kind is None or not (getattr(kind, "shortcut", False) or getattr(kind.config, "shortcut", False)):
            return None
        return float(kind.config.shortcut_scale)

    def identity_signature(self) -> str | None:
        """What an `Identity` must record as its recogniser to fit the loaded identity adapter (None: no adapter)."""
        adapter = self._adapter("identity")
        return None if adapter is None else adapter.adapter_kind.signature

    def identity_tokens(self, identities: list[idg.Identity], batch: int, rows: GuidanceRows,
                        shortcut_scale: float | None = None) -> torch.Tensor:
        """`[rows * batch, N, T, D]` tokens: the identities in the "full" row, "no reference" in the others
        (`shortcut_scale`: this call's PlusV2 shortcut weight instead of the adapter's)."""
        adapter = self._adapter("identity")
        projection, kind = self._projection(adapter), adapter.adapter_kind
        if shortcut_scale is not None and shortcut_scale != kind.config.shortcut_scale:
            kind = kind_for(replace(kind.config, shortcut_scale=shortcut_scale))  # this call's own kind object
        null = kind.tokens(projection, adapter.null_identity)
        real = [kind.tokens(projection, i) for i in identities] or [null]
        null, *real = side_by_side([null, *real])
        real = torch.stack(real)
        nulls = null[None].expand(real.shape[0], -1, -1)
        return torch.cat([r[None].expand(batch, -1, -1, -1) for r in rows.references(nulls, real)])

    def style_tokens(self, style_image, batch: int, rows: GuidanceRows) -> torch.Tensor:
        """`[rows * batch, 1, T, D]` style tokens ("no style" = the projection of a zero embedding)."""
        adapter = self._adapter("style")
        projection, kind, encoder = self._projection(adapter), adapter.adapter_kind, self.image_encoder_for("style")
        null = kind.image_tokens(projection, encoder, None)
        real = null if style_image is None else kind.image_tokens(projection, encoder, style_image)
        return torch.cat([r[None, None].expand(batch, -1, -1, -1) for r in rows.references(null, real)])

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
        analyzer = self.get_face_analyzer() if scene is not None or style_array is not None else None
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
    def __call__(self, prompt: str | list[str] | GenerationSettings, negative_prompt: str | list[str] | None = None,
                 identities: Sequence[IdentityInput] | None = None, mix: Sequence[float] | None = None,
                 style_image: PIL.Image.Image | str | None = None, style_strength: float = 1.0,
                 scene_image: PIL.Image.Image | str | None = None, scene_faces: Sequence[int] | None = None,
                 regions: str | None = None, text_guidance_scale: float = DEFAULT_TEXT_SCALE, reference_guidance_scale: float | None = None,
                 num_inference_steps: int = DEFAULT_STEPS, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, num_images_per_prompt: int = 1,
                 output_type: str = "pil", scheduler: str = DEFAULT_SCHEDULER, speed: str = "",
                 reference_guidance_start: float | None = None, shortcut_scale: float | None = None,
                 decoder: str = "full", preview: Callable[[int, int, PIL.Image.Image], None] | None = None, on_step: Callable[[int, int], None] | None = None, return_dict: bool = True):
        """Generate images of the given people: `pipe(settings)`, or `pipe(prompt, ...)` with the fields of
        `GenerationSettings` as keywords (which builds them; each field, default and check is documented there).

        Args:
            prompt (`str`, `list[str]` or `GenerationSettings`): what to draw, or the whole request.
            generator (`torch.Generator` or a list, one per image): default: one seeded with the settings' `seed`.
            on_step (`Callable`, *optional*): `on_step(step, total)` after every denoising step; raising from it
                stops the run (how the server cancels jobs).
            preview (`Callable`, *optional*): `preview(step, total, image)` after every step with a small PIL
                image of the first image's prediction so far, by the tiny decoder (needs `tiny_vae`).

        Returns:
            `FaceStudioPipelineOutput` (`(images,)` without `return_dict`): the images and the settings used
            (their `metadata()`, the identities' names and strengths, the scheduler).
        """
        # 1. Check inputs: the settings' own checks, the adapters they need; the output size resolved
        settings = prompt if isinstance(prompt, GenerationSettings) else GenerationSettings(
            prompt, negative_prompt, tuple(identities or ()), mix, style_image, style_strength, scene_image,
            scene_faces, regions, text_guidance_scale, reference_guidance_scale, num_inference_steps, width, height,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type, scheduler=scheduler, speed=speed,
            reference_guidance_start=reference_guidance_start, shortcut_scale=shortcut_scale, decoder=decoder)
        self.check_adapters(settings.validate())
        if preview is not None and self.tiny_vae is None:
            raise FaceStudioError("previews need the tiny decoder (decoding.load_tiny_decoder)")
        scene = None if settings.scene_image is None else \
            load_image(settings.scene_image, min_side=32, name="scene image")
        settings = settings.resolved(self.default_side, None if scene is None else scene.size)
        people, mix, scene_faces = list(settings.identities), settings.mix, settings.scene_faces
        height, width, output_type = settings.height, settings.width, settings.output_type
        generator = settings.generator() if generator is None else generator
        style = None if settings.style_image is None else load_image(settings.style_image, name="style image")
        device = self._execution_device
        prompts, negatives = settings.prompts(), settings.negative_prompts()
        batch = len(prompts) * settings.num_images_per_prompt

        # 2. Encode the prompt for the guidance rows the scales need (of: (no text, no ref), (text), (text + ref))
        plan = GuidancePlan.for_call(bool(people) or style is not None, settings.text_guidance_scale,
                                     settings.reference_scale, settings.reference_guidance_start)
        rows = plan.stacked
        text, text_added = self.encode_text(prompts, negatives, device, settings.num_images_per_prompt, rows,
                                            height, width)

        # 3. Faces: photos -> identities; region sources -> per-person masks (and the scene's faces to redo)
        encoded = self.encode_identities(people, mix)
        count = max(len(encoded), 1)
        full_masks, edit = self.place_people(people, count, height, width, settings.regions, style, scene,
                                             scene_faces)

        # 4-6. Identity tokens, style tokens, region masks: computed once for the whole call
        tokens, region_masks = [], []
        strengths = [p.strength for p in people] if mix is None else [people[0].strength if people else 1.0]
        for adapter in self.facestudio_adapters:
            if adapter.kind == "identity":
                tokens.append(self.identity_tokens(encoded, batch, rows, settings.shortcut_scale))
                masks = self.region_masks(full_masks, height, width)
                region_masks.append(RegionMasks(masks, tuple(strengths) if encoded else (0.0,)))
            else:
                tokens.append(self.style_tokens(style, batch, rows))
                region_masks.append(RegionMasks.full(1, settings.style_strength if style is not None else 0.0))
        tokens = [t.to(device=device, dtype=self.unet.dtype) for t in tokens]
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        unet_kwargs = {"added_cond_kwargs": text_added} if text_added else {}
        if tokens:
            unet_kwargs = {"added_cond_kwargs": {**text_added, "image_embeds": tokens},
                           "cross_attention_kwargs": {"ip_adapter_masks": LayerMasks(tuple(region_masks), latent_size)}}

        # 7. Timesteps and latents (a scheduler of this call's own: schedulers keep step state)
        speed = loaded_speed_model(self)  # its LoRA is in the UNet: its timestep spacing applies to every call
        scheduler = make_scheduler(settings.scheduler, self.scheduler,
                                   timestep_spacing=speed.timestep_spacing if speed else None)
        scheduler.set_timesteps(settings.num_inference_steps, device=device)
        shape = (batch, self.unet.config.in_channels, *latent_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=text.dtype)
        latents = latents * scheduler.init_noise_sigma
        scene_blend = None if edit is None else edit.latents(self.encode_pixels, batch, generator, latents.dtype,
                                                              device)

        # 8. Denoising loop
        timesteps = scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                latents, denoised = self.denoise_step(scheduler, t, latents, plan, text, unet_kwargs, settings,
                                                      generator, return_denoised=True)
                if scene_blend is not None:  # keep the scene outside the faces: it re-enters at the next noise level
                    latents = scene_blend.keep_scene(latents, scheduler, timesteps, i)
                progress.update()
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
                if preview is not None:  # the clean image the step predicts; the noisy latents where none is given
                    preview(i + 1, len(timesteps), preview_image(self.tiny_vae, latents if denoised is None else
                                                                 denoised))

        # 9. Decode, paste the scene's own pixels back outside the faces
        record = {**settings.metadata(), "identities": [i.name for i in encoded], "strengths": strengths,
                  "style_image": style is not None, "scene_image": scene is not None,
                  "scheduler": settings.scheduler, "scheduler_class": type(scheduler).__name__,
                  "speed": speed.name if speed else None}
        metadata = self.image_record(settings, record)
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return FaceStudioPipelineOutput(latents, record, metadata) if return_dict else (latents,)
        image = tiny_decode(self.tiny_vae, latents) if settings.decoder == "tiny" else \
            self.decode_latents_to_pixels(latents)
        image = self.image_processor.postprocess(image, output_type="np")
        if edit is not None:
            image = edit.paste(image)
        if output_type == "pil":
            image = self.image_processor.numpy_to_pil(image)
        elif output_type == "pt":
            image = torch.from_numpy(image).permute(0, 3, 1, 2)
        self.maybe_free_model_hooks()
        return FaceStudioPipelineOutput(image, record, metadata) if return_dict else (image,)

    def adapter_metadata(self) -> list[dict]:
        """The loaded adapters as the metadata lists them: their role and their kind's name."""
        return [{"kind": a.kind, "type": a.adapter_kind.name} for a in self.facestudio_adapters]

    def image_record(self, settings: GenerationSettings, record: dict) -> dict:
        """The images' metadata in the one schema (`labels.schema`); front ends add their own keys to it."""
        from .labels.schema import region_value

        identities = [{"name": p.name or (p.identity.name if p.identity is not None else "") or f"identity {i + 1}",
                       "strength": p.strength, "region": region_value(p.region)}
                      for i, p in enumerate(settings.identities)]
        return {**settings.metadata(), "seed": settings.seed, "scheduler": record["scheduler"],
                "scheduler_class": record.get("scheduler_class"), "speed": record.get("speed"),
                "base_model": getattr(self, "name_or_path", None) or None,
                "adapters": self.adapter_metadata(),
                "identities": identities, "style_image": record["style_image"] or None,
                "scene_image": record["scene_image"] or None}

    def denoise_step(self, scheduler, t, latents: torch.Tensor, rows: GuidanceRows | GuidancePlan,
                     text: torch.Tensor, unet_kwargs: dict, settings: GenerationSettings, generator=None,
                     return_denoised: bool = False):
        """One step of the loop: the UNet on this step's guidance rows (`text` and `unet_kwargs` stacked as
        the plan's `stacked` rows), the rows combined, the scheduler's step. Returns the next latents (with
        `return_denoised`, also the clean latents the sampler predicts, or None when it gives none)."""
        plan = rows if isinstance(rows, GuidancePlan) else GuidancePlan(rows)
        stacked, rows = plan.stacked, plan.at(t)
        if rows != stacked:
            text, unet_kwargs = stacked.take(text, rows), _rows_of(unet_kwargs, stacked, rows)
        model_input = scheduler.scale_model_input(rows.latents(latents), t)
        eps = self.unet(model_input, t, encoder_hidden_states=text, return_dict=False, **unet_kwargs)[0]
        eps = rows.combine(eps, settings.text_guidance_scale, settings.reference_scale)
        out = scheduler.step(eps, t, latents, return_dict=True, **step_kwargs(scheduler, generator))
        if not return_denoised:
            return out.prev_sample
        return out.prev_sample, getattr(out, "pred_original_sample", None) if getattr(out, "denoised", None) is None \
            else out.denoised

    def encode_text(self, *args) -> tuple[torch.Tensor, dict]:
        """`text_conditioning(*args)` under the prompt-encoding lock (see `_TEXT_LOCK`); safe from any thread."""
        with self._TEXT_LOCK:
            return self.text_conditioning(*args)

    def text_conditioning(self, prompts: list[str], negatives: list[str] | None, device, num_images_per_prompt: int,
                          rows: GuidanceRows, height: int, width: int) -> tuple[torch.Tensor, dict]:
        """The UNet's text inputs for the guidance `rows`: `(encoder_hidden_states, added_cond_kwargs entries)`.
        Stable Diffusion 1.x/2.x needs no added conditions."""
        positive, negative = self.encode_prompt(prompts, device, num_images_per_prompt, True, negatives)
        return rows.text(negative, positive), {}

    def decode_latents_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run_vae(lambda vae, x: vae.decode(x, return_dict=False)[0], latents / self.vae.config.scaling_factor)

    def run_vae(self, work: Callable, tensor: torch.Tensor):
        """`work(vae, tensor)` with the tensor in the VAE's dtype (SDXL overrides this to run in float32)."""
        return work(self.vae, tensor.to(self.vae.dtype))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents (the mode of the VAE's posterior)."""
        mode = self.run_vae(lambda vae, x: vae.encode(x).latent_dist.mode(), pixels)
        return mode * self.vae.config.scaling_factor


def _rows_of(unet_kwargs: dict, stacked: GuidanceRows, rows: GuidanceRows) -> dict:
    """`unet_kwargs` with its per-row tensors (SDXL's added conditions, the adapters' tokens) cut to `rows`."""
    added = unet_kwargs.get("added_cond_kwargs")
    if not added:
        return unet_kwargs
    taken = {key: [stacked.take(t, rows) for t in value] if isinstance(value, list) else stacked.take(value, rows)
             for key, value in added.items()}
    return {**unet_kwargs, "added_cond_kwargs": taken}


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
        ...            num_inference_steps=DEFAULT_STEPS, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].save("me-painted.png")
        ```
    """

    # the adapters' CLIP encoders run after the text encoder, before the UNet
    model_cpu_offload_seq = "text_encoder->image_encoder->identity_image_encoder->style_image_encoder->unet->vae->tiny_vae"
    _optional_components = [*StableDiffusionPipeline._optional_components, *GUIDANCE_ENCODERS, "tiny_vae"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True, identity_image_encoder=None,
                 style_image_encoder=None, tiny_vae=None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self._init_guidance(identity_image_encoder, style_image_encoder, tiny_vae)

