"""`FaceStudioFluxPipeline`: FLUX.1 (dev, schnell) with PuLID-FLUX identities, each in its own region.

A thin pipeline over diffusers' `FluxPipeline` (its prompt encoding, latent packing, timesteps and decoding
are called, not copied) sharing the SD pipelines' mixin: identities, pooling, mixing, region sources and the
one request (`GenerationSettings`). Identities enter through PuLID-FLUX's cross-attentions between the
transformer's blocks (`guidance/pulid_flux.py`), each person gated by their region mask at the image-token
resolution. Guidance follows PuLID-FLUX's reference: FLUX.1-dev's distilled guidance as an input ("fake CFG",
`distilled_guidance_scale`), and true CFG when the text or reference scale is above 1, through facestudio's
guidance rows (`guidance/cfg.py`: (negative prompt, "no identity"), (prompt, "no identity"), (prompt, the
identities)); with equal scales that is PuLID's `true_cfg`. `start_step` is the first step with identities.
Per-call state travels in arguments and `joint_attention_kwargs`, so calls may run at once.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from .adapter_loading import GUIDANCE_ENCODERS, LoadedAdapter
from .attention import resize_masks, side_by_side
from .errors import FaceStudioError, ModelFileError
from .imaging import load_image
from .guidance import identity as idg
from .guidance.cfg import GuidanceRows
from .guidance.kinds.pulid_flux import PuLIDFluxConfig, PuLIDFluxKind
from .guidance.pulid_flux import IDENTITY_KEY, FluxIdentityCall, install, token_grid, uninstall
from .pipeline import FaceStudioMixin, FaceStudioPipelineOutput
from .request import (DEFAULT_DISTILLED_GUIDANCE, FLUX_DEFAULT_SIDE, FLUX_DEFAULT_STEPS, GenerationSettings,
                      IdentityInput)

logger = logging.getLogger(__name__)

#: What a FLUX image records as its sampler: the model's own flow-matching Euler (`settings.scheduler`, a name of
#: the SD samplers, does not apply).
FLUX_SCHEDULER = "flow-match-euler"



class FaceStudioFluxPipeline(FaceStudioMixin, FluxPipeline):
    """FLUX.1 with PuLID-FLUX identities, per-person regions and strengths, and text/reference guidance.

    Build it with `facestudio.models.load_base_pipeline(name, FaceStudioFluxPipeline)` (`"tiny"`, a folder or
    `black-forest-labs/FLUX.1-schnell`), then `load_pulid_flux(...)`.

    Example:
        ```py
        >>> pipe = load_base_pipeline("tiny", FaceStudioFluxPipeline)
        >>> pipe.load_pulid_flux(state_dict, PuLIDFluxConfig(heads=2, head_dim=16))
        >>> person = IdentityInput(identity=pulid_identity(id_tokens), region=(0, 0, 32, 64))
        >>> image = pipe("two friends", identities=[person, other], height=64, width=64).images[0]
        ```
    """

    default_side = FLUX_DEFAULT_SIDE
    model_cpu_offload_seq = FluxPipeline.model_cpu_offload_seq
    # tiny_vae: registered (as None) like the SD pipelines' so the mixin's components match; FLUX has no
    # TAESD decoder wired yet
    _optional_components = [*FluxPipeline._optional_components, *GUIDANCE_ENCODERS, "tiny_vae"]

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None, identity_image_encoder=None, style_image_encoder=None,
                 tiny_vae=None):
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        self._init_guidance(identity_image_encoder, style_image_encoder, tiny_vae)
        #: PuLID's ID encoder (the pulid-encoder's object: `encode(photos, faces)`, `null_tokens()`), when loaded.
        self.pulid_encoder = None

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict:
        """What `load_base_pipeline("tiny", FaceStudioFluxPipeline)` builds (`models_flux.tiny_flux_components`)."""
        from .models_flux import tiny_flux_components

        return tiny_flux_components(seed)

    # ------------------------------------------------------------------ loading PuLID-FLUX

    def load_pulid_flux(self, source, config: PuLIDFluxConfig | None = None, *, encoder=None,
                        face_analyzer=None, **hub_kwargs) -> None:
        """Load PuLID-FLUX's cross-attentions into the transformer (replacing any loaded before).

        Args:
            source: the flat checkpoint as a dict, a `.safetensors` path, or `(hub id, file name)` such as
                `("guozinan/PuLID", "pulid_flux_v0.9.1.safetensors")` (huggingface_hub's cache; `hub_kwargs`
                such as `local_files_only`, `cache_dir`).
            config (`PuLIDFluxConfig`, *optional*): the architecture; default: the published one.
            encoder (*optional*): PuLID's ID encoder for photos; without it identities come encoded.
            face_analyzer (`FaceAnalyzer`, *optional*): the detector photos are read with.

        Raises:
            ModelFileError: the file cannot be read, or a `pulid_ca` key is missing, unexpected or of another shape.
        """
        kind = PuLIDFluxKind(config or PuLIDFluxConfig())
        state, label = _read_flat(source, hub_kwargs)
        modules = kind.modules_from(state, self.transformer, label)
        install(self.transformer, modules)
        self.pulid_encoder = encoder
        if face_analyzer is not None:
            self.face_analyzer = face_analyzer
        self.facestudio_adapters = (LoadedAdapter(kind, 0, kind.null_identity(encoder)),)

    def load_adapters(self, *args, **kwargs):
        raise FaceStudioError("FLUX takes PuLID-FLUX identities (load_pulid_flux), not IP-Adapters of SD")

    def unload_adapters(self) -> None:
        """Remove PuLID-FLUX: the stock FLUX transformer again."""
        uninstall(self.transformer)
        self.pulid_encoder = None
        self.facestudio_adapters = ()

    def encode_photos(self, photos, faces, name: str = "") -> idg.Identity:
        adapter = self._adapter("identity")
        if adapter is None:
            raise FaceStudioError("no PuLID-FLUX model is loaded: identities cannot be encoded")
        return adapter.adapter_kind.encode_photos(self.get_face_analyzer(), self.pulid_encoder, photos, faces, name)

    # ------------------------------------------------------------------ steps of a call

    def check_flux_settings(self, settings: GenerationSettings) -> None:
        """What FLUX does not take (yet), refused by name before any work."""
        if settings.identities and not self.facestudio_adapters:
            raise FaceStudioError("identities given, but PuLID-FLUX is not loaded (load_pulid_flux(...))")
        if settings.style_image is not None:
            raise FaceStudioError("a style image is not supported on FLUX (PuLID-FLUX has no style adapter)")
        if settings.speed:
            raise FaceStudioError(f"speed model {settings.speed}: the speed models are for SD 1.5 and SDXL; "
                                  "FLUX.1-schnell is FLUX's few-step model")
        if settings.decoder != "full":
            raise FaceStudioError(f"decoder {settings.decoder!r}: the tiny decoder (TAESD) decodes SD 1.5 and SDXL "
                                  "latents; FLUX decodes with its own VAE ('full')")
        if settings.reference_guidance_start is not None:
            raise FaceStudioError("late reference guidance (reference_guidance_start) is not supported on FLUX; "
                                  "PuLID-FLUX's start_step delays the identities instead")
        if self.pulid_encoder is None and any(p.identity is None for p in settings.identities):
            raise FaceStudioError("PuLID-FLUX needs PuLID's ID encoder to read photos, and none is loaded; give "
                                  "encoded identities (IdentityInput(identity=pulid_identity(tokens)))")
        if settings.width % 16 or settings.height % 16:
            raise FaceStudioError(f"FLUX needs a width and height that are multiples of 16, got "
                                  f"{settings.width}x{settings.height}")
        self.check_adapters(settings)

    def token_gates(self, masks: np.ndarray, strengths: Sequence[float], height: int, width: int) -> torch.Tensor:
        """Per-person masks `[N, height, width]` at the image-token grid (area-averaged, packed row-major as
        `FluxPipeline._pack_latents` orders the tokens), times each person's strength: `[N, tokens]`."""
        rows, columns = token_grid(height, width, self.vae_scale_factor)
        small = resize_masks(torch.from_numpy(np.asarray(masks, np.float32)), rows, columns)
        return small.reshape(len(small), -1) * torch.tensor(strengths, dtype=torch.float32)[:, None]

    def person_tokens(self, identities: list[idg.Identity], batch: int, rows: GuidanceRows) -> list[torch.Tensor]:
        """Per person `[rows * batch, T, id_dim]`: the person's ID tokens in the "full" row, "no identity" (PuLID's
        `uncond_id`) in the others."""
        adapter = self._adapter("identity")
        kind = adapter.adapter_kind
        null = kind.tokens(None, adapter.null_identity)
        out = []
        for identity in identities:
            # one token count in every row: the sets repeated whole, which leaves each attention's output as it is
            null_set, real = side_by_side([null, kind.tokens(None, identity)])
            out.append(torch.cat([r[None].expand(batch, -1, -1) for r in rows.references(null_set, real)]))
        return out

    def text_inputs(self, settings: GenerationSettings, rows: GuidanceRows, device) -> tuple:
        """`(T5 tokens, pooled CLIP, text ids)` stacked per guidance row (a negative prompt only where a row
        needs one)."""
        with self._TEXT_LOCK:
            prompts = settings.prompts()
            positive, pooled, text_ids = self.encode_prompt(prompts, device=device,
                                                            num_images_per_prompt=settings.num_images_per_prompt)
            if "uncond" not in rows.conditions:
                return rows.text(positive, positive), rows.text(pooled, pooled), text_ids
            negatives = settings.negative_prompts() or [""] * len(prompts)
            negative, negative_pooled, _ = self.encode_prompt(negatives, device=device,
                                                              num_images_per_prompt=settings.num_images_per_prompt)
        return rows.text(negative, positive), rows.text(negative_pooled, pooled), text_ids

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | GenerationSettings, negative_prompt: str | list[str] | None = None,
                 identities: Sequence[IdentityInput] | None = None, mix: Sequence[float] | None = None,
                 scene_image: PIL.Image.Image | str | None = None, scene_faces: Sequence[int] | None = None,
                 regions: str | None = None, text_guidance_scale: float = 1.0,
                 reference_guidance_scale: float | None = None, num_inference_steps: int = FLUX_DEFAULT_STEPS,
                 height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, num_images_per_prompt: int = 1,
                 distilled_guidance_scale: float | None = None, start_step: int = 0, output_type: str = "pil",
                 on_step: Callable[[int, int], None] | None = None,
                 preview: Callable[[int, int, PIL.Image.Image], None] | None = None, return_dict: bool = True):
        """Generate images of the given people: `pipe(settings)`, or `pipe(prompt, ...)` with the fields of
        `GenerationSettings` as keywords. FLUX's defaults differ from SD's: scales of 1 (no true CFG: FLUX.1-dev
        is guidance-distilled; `distilled_guidance_scale`, default 3.5, steers it), 28 steps, 1024 px.

        Args:
            prompt (`str`, `list[str]` or `GenerationSettings`): what to draw, or the whole request.
            generator (`torch.Generator` or a list, one per image): default: one seeded with the settings' `seed`.
            on_step (`Callable`, *optional*): `on_step(step, total)` after every step; raising from it stops the run.
            preview (`Callable`, *optional*): the SD pipelines' per-step preview; FLUX has no tiny decoder yet, so
                only None (what the server and CLI pass when no tiny decoder is loaded) is accepted.

        Returns:
            `FaceStudioPipelineOutput` (`(images,)` without `return_dict`).
        """
        # 1. Check inputs
        if preview is not None:
            raise FaceStudioError("previews need the tiny decoder, which the FLUX pipeline has none of yet")
        settings = prompt if isinstance(prompt, GenerationSettings) else GenerationSettings(
            prompt, negative_prompt, tuple(identities or ()), mix, scene_image=scene_image, scene_faces=scene_faces,
            regions=regions,
            text_guidance_scale=text_guidance_scale, reference_guidance_scale=reference_guidance_scale,
            num_inference_steps=num_inference_steps, width=width, height=height,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type,
            distilled_guidance_scale=distilled_guidance_scale, start_step=start_step)
        settings.validate()
        scene = None if settings.scene_image is None else \
            load_image(settings.scene_image, min_side=32, name="scene image")
        sized_by_scene = scene is not None and settings.width is None and settings.height is None
        settings = settings.resolved(self.default_side, None if scene is None else scene.size)
        if sized_by_scene:  # the scene's shape in FLUX's steps of 16 pixels (2x2 patches of 8x latents)
            settings = replace(settings, width=max(16, round(settings.width / 16) * 16),
                               height=max(16, round(settings.height / 16) * 16))
        self.check_flux_settings(settings)
        people, height, width = list(settings.identities), settings.height, settings.width
        generator = settings.generator() if generator is None else generator
        device = self._execution_device
        batch = len(settings.prompts()) * settings.num_images_per_prompt

        # 2. Encode the prompt for each guidance row
        # PuLID's fake CFG (scales 1): one row; its true CFG (equal scales): two; else three-way (guidance/cfg.py)
        rows = GuidanceRows.for_scales(bool(people), settings.text_guidance_scale, settings.reference_scale)
        text, pooled, text_ids = self.text_inputs(settings, rows, device)

        # 3. Faces: identities and their regions, as gates at the image-token grid
        encoded = self.encode_identities(people, settings.mix)
        strengths = [p.strength for p in people] if settings.mix is None else [people[0].strength]
        joint, edit = {}, None
        if self.facestudio_adapters:
            call = None
            if encoded:
                masks, edit = self.place_people(people, len(encoded), height, width, settings.regions, None, scene,
                                                settings.scene_faces)
                call = FluxIdentityCall(tuple(self.person_tokens(encoded, batch, rows)),
                                        self.token_gates(masks, strengths, height, width))
            joint = {IDENTITY_KEY: call}

        # 4. Latents and timesteps, as FluxPipeline makes them (a scheduler of this call's own)
        latents, image_ids = self.prepare_latents(batch, self.transformer.config.in_channels // 4, height, width,
                                                  text.dtype, device, generator)
        scheduler = copy.deepcopy(self.scheduler)
        steps = settings.num_inference_steps
        mu = calculate_shift(latents.shape[1], scheduler.config.get("base_image_seq_len", 256),
                             scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                             scheduler.config.get("max_shift", 1.15))
        sigmas = None if getattr(scheduler.config, "use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)
        scene_blend = None if edit is None else edit.latents(self.encode_pixels, batch, generator, latents.dtype,
                                                              device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            scale = settings.distilled_guidance_scale
            scale = DEFAULT_DISTILLED_GUIDANCE if scale is None else scale
            guidance = torch.full([1], scale, device=device, dtype=torch.float32).expand(batch * len(rows))

        # 5. Denoising loop (identities from `start_step` on, as PuLID's)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                step_joint = joint if i >= settings.start_step or not joint else {IDENTITY_KEY: None}
                latents = self.denoise_step(scheduler, t, latents, rows, text, pooled, text_ids, image_ids, guidance,
                                            step_joint, settings)
                if scene_blend is not None:  # the scene outside the faces, re-noised to the next step's level
                    latents = self.keep_scene(scene_blend, latents, scheduler, timesteps, i, height, width)
                progress.update()
                if on_step is not None:
                    on_step(i + 1, len(timesteps))

        # 6. Decode
        record = {**settings.metadata(), "identities": [i.name for i in encoded], "strengths": strengths,
                  "scene_image": scene is not None,
                  "distilled_guidance_scale": None if guidance is None else float(guidance[0]),
                  "start_step": settings.start_step, "scheduler": FLUX_SCHEDULER,
                  "scheduler_class": type(scheduler).__name__}
        if settings.output_type == "latent":
            self.maybe_free_model_hooks()
            return FaceStudioPipelineOutput(latents, record) if return_dict else (latents,)
        latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        image = self.image_processor.postprocess(image, output_type="np")
        if edit is not None:
            image = edit.paste(image)  # the scene's own pixels outside the (grown) faces
        if settings.output_type == "pil":
            image = self.image_processor.numpy_to_pil(image)
        elif settings.output_type == "pt":
            image = torch.from_numpy(image).permute(0, 3, 1, 2)
        self.maybe_free_model_hooks()
        return FaceStudioPipelineOutput(image, record) if return_dict else (image,)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> FLUX's latents (the posterior's mode, shifted and scaled as FLUX's VAE is read)."""
        mode = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        return (mode - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def keep_scene(self, blend, latents, scheduler, timesteps, i: int, height: int, width: int) -> torch.Tensor:
        """`SceneBlend.keep_scene` on the unpacked latents, packed again (FLUX's tokens are 2x2 latent patches)."""
        channels = self.transformer.config.in_channels // 4
        grid = self._unpack_latents(latents, height, width, self.vae_scale_factor)
        kept = blend.keep_scene(grid, _FlowNoise(scheduler), timesteps, i)
        return self._pack_latents(kept, kept.shape[0], channels, kept.shape[2], kept.shape[3])

    def denoise_step(self, scheduler, t, latents, rows: GuidanceRows, text, pooled, text_ids, image_ids, guidance,
                     joint: dict, settings: GenerationSettings) -> torch.Tensor:
        """One step: the transformer on every guidance row at once, the rows combined, the scheduler's step."""
        model_input = rows.latents(latents)
        timestep = t.expand(model_input.shape[0]).to(latents.dtype)
        velocity = self.transformer(hidden_states=model_input, timestep=timestep / 1000, guidance=guidance,
                                    pooled_projections=pooled, encoder_hidden_states=text, txt_ids=text_ids,
                                    img_ids=image_ids, joint_attention_kwargs=joint, return_dict=False)[0]
        velocity = rows.combine(velocity, settings.text_guidance_scale, settings.reference_scale)
        return scheduler.step(velocity, t, latents, return_dict=False)[0]


class _FlowNoise:
    """`add_noise` of the SD schedulers for a flow-matching scheduler (`x_t = sigma * noise + (1 - sigma) * x` at
    the scheduler's current step), which `regions.SceneBlend.keep_scene` calls."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def add_noise(self, sample, noise, timesteps):
        return self.scheduler.scale_noise(sample, timesteps, noise)


def _read_flat(source, hub_kwargs: dict) -> tuple[dict, str]:
    """`(flat state dict, label)` of a checkpoint given as a dict, a safetensors path or `(hub id, file name)`."""
    if isinstance(source, dict):
        return source, "(checkpoint dict)"
    from safetensors.torch import load_file

    if isinstance(source, (tuple, list)):
        from huggingface_hub import hf_hub_download

        repo, filename = source
        try:
            path = hf_hub_download(repo, filename, **hub_kwargs)
        except (OSError, ValueError) as error:
            raise ModelFileError(f"PuLID-FLUX checkpoint {repo}/{filename} could not be fetched: {error}") from error
        label = f"{repo}/{filename}"
    else:
        path, label = Path(source), str(source)
        if not path.is_file():
            raise ModelFileError(f"PuLID-FLUX checkpoint {source}: no such file")
    try:
        return load_file(str(path)), label
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelFileError(f"PuLID-FLUX checkpoint {label} is not a readable safetensors file: {error}") from error
