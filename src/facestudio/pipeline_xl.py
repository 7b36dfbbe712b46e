"""`FaceStudioXLPipeline`: `FaceStudioPipeline` for SDXL, beside it (`pipeline.py` holds everything they share)."""

from __future__ import annotations

import threading

import torch
from diffusers import StableDiffusionXLPipeline

from .adapter_loading import GUIDANCE_ENCODERS
from .pipeline import FaceStudioMixin
from .request import SDXL_DEFAULT_SIDE


class FaceStudioXLPipeline(FaceStudioMixin, StableDiffusionXLPipeline):
    """`FaceStudioPipeline` for SDXL: the same adapters, identities, regions, mixing and guidance scales.

    SDXL's UNet also takes the pooled text embedding and the size conditioning ("time ids"); they are built
    here per guidance row. Public SDXL adapters load with `load_public_adapters` (see the SDXL presets).
    """

    default_side = SDXL_DEFAULT_SIDE
    _VAE_UPCAST_LOCK = threading.Lock()
    model_cpu_offload_seq = ("text_encoder->text_encoder_2->image_encoder->identity_image_encoder->"
                             "style_image_encoder->unet->vae->tiny_vae")
    _optional_components = [*StableDiffusionXLPipeline._optional_components, *GUIDANCE_ENCODERS, "tiny_vae"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None, identity_image_encoder=None, style_image_encoder=None,
                 tiny_vae=None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self._init_guidance(identity_image_encoder, style_image_encoder, tiny_vae)

    def text_conditioning(self, prompts, negatives, device, num_images_per_prompt, rows, height, width):
        positive, negative, pooled, negative_pooled = self.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=True, negative_prompt=negatives)
        projection_dim = self.text_encoder_2.config.projection_dim if self.text_encoder_2 is not None \
            else int(pooled.shape[-1])
        time_ids = self._get_add_time_ids((height, width), (0, 0), (height, width), dtype=positive.dtype,
                                          text_encoder_projection_dim=projection_dim).to(device)
        added = {"text_embeds": rows.text(negative_pooled, pooled),
                 "time_ids": time_ids.repeat(positive.shape[0] * len(rows), 1)}
        return rows.text(negative, positive), added

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
