"""Baselines measured the same way as facestudio's images.

* no identity: the base model on the same prompt and seed with no person given: the lower reference.
* paste: the aligned reference face warped onto the face of the no-identity image (or, where that image has
  no face, into the person's region) and blended: the copy-paste upper reference. High similarity to the
  reference photo, and a large gap to a held-out photo, is what copying looks like.
* tuning cost: DreamBooth-LoRA and Textual Inversion training steps run for real on the same UNet, timed, and
  scaled to their usual step counts, so "N times faster to personalise" is measured, not quoted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..faces.alignment import AlignedFace, align_face, paste_back
from ..faces.detection import Face
from .scoring import centre_inside
from .timing import stopwatch

# ----------------------------------------------------------------------------------------------- paste


def paste_reference(canvas: np.ndarray, reference: np.ndarray, reference_face: Face, canvas_faces: list[Face],
                    region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The reference photo's face, aligned onto the canvas's face (the one in `region`, else the largest).

    Args:
        canvas (`np.ndarray`): RGB `uint8` image to paste into (the no-identity image).
        reference (`np.ndarray`): RGB `uint8` reference photo.
        reference_face (`Face`): the reference photo's face (`select_face` of its detected faces).
        canvas_faces (`list[Face]`): faces detected in `canvas`, largest first.
        region: the person's box in the canvas; with no canvas face inside it the reference face is placed at
            its centre, its crop 60% of the region's shorter side.
    """
    h, w = canvas.shape[:2]
    box = region if region is not None else (0.0, 0.0, float(w), float(h))
    inside = [f for f in canvas_faces if centre_inside(f, box)]
    if inside:
        target = inside[0]
        size = int(np.clip(round(4 * target.eye_distance / 8) * 8, 64, 512))  # about the face's own scale
        target_alignment = align_face(canvas, target.landmark_array(), "arcface", size)
    else:
        side = 0.6 * min(box[2] - box[0], box[3] - box[1])
        size = int(max(64, round(side)))
        x0, y0 = (box[0] + box[2] - side) / 2, (box[1] + box[3] - side) / 2
        k = side / size
        target_alignment = AlignedFace(np.zeros((size, size, 3), np.uint8),
                                       np.array([[1 / k, 0, -x0 / k], [0, 1 / k, -y0 / k]]),
                                       np.array([[k, 0, x0], [0, k, y0]]), "arcface")
    crop = align_face(reference, reference_face.landmark_array(), "arcface", size).image
    return paste_back(canvas, crop, target_alignment, feather=0.15)


# ----------------------------------------------------------------------------------------------- tuning cost


@dataclass(frozen=True)
class TuningRecipe:
    """How long a tuning method usually trains: optimizer steps x forward-backward passes per step, each pass
    on `images_per_pass` images; and the class images some recipes sample before training."""

    method: str
    steps: int
    passes_per_step: int
    source: str
    images_per_pass: int = 1
    class_images: int = 0
    class_image_steps: int = 0


#: The usual step counts, from diffusers' own training examples (the settings their READMEs run).
DREAMBOOTH_LORA = TuningRecipe(
    "DreamBooth-LoRA", 500, 1,
    "diffusers examples/dreambooth/README_lora.md: --max_train_steps=500, --train_batch_size=1")
DREAMBOOTH_LORA_PRIOR = TuningRecipe(
    "DreamBooth-LoRA + prior", 800, 1,
    "diffusers examples/dreambooth/README.md, prior preservation: --with_prior_preservation, "
    "--num_class_images=200, --max_train_steps=800, --train_batch_size=1 (each pass: the photo and a class "
    "image); the class images are sampled first by the base pipeline at its default 50 steps",
    images_per_pass=2, class_images=200, class_image_steps=50)
TEXTUAL_INVERSION = TuningRecipe(
    "Textual Inversion", 3000, 4,
    "diffusers examples/textual_inversion/README.md: --max_train_steps=3000, --gradient_accumulation_steps=4, "
    "--train_batch_size=1")


@dataclass(frozen=True)
class TuningCost:
    """A measured training pass and what the usual recipe costs at that speed."""

    recipe: TuningRecipe
    seconds_per_pass: float
    passes_timed: int
    latent_size: tuple[int, int]

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_pass * self.recipe.steps * self.recipe.passes_per_step

    def class_image_seconds(self, seconds_per_sampling_step: float) -> float:
        """Sampling the recipe's class images, at a measured time per guided sampling step."""
        return self.recipe.class_images * self.recipe.class_image_steps * seconds_per_sampling_step

    def personalisation_seconds(self, sampling_seconds: float, seconds_per_sampling_step: float) -> float:
        """Photo to first image: the class images (if the recipe has any), training, then one image's sampling
        (`sampling_seconds`)."""
        return self.class_image_seconds(seconds_per_sampling_step) + self.total_seconds + sampling_seconds

    @classmethod
    def from_dict(cls, d: dict) -> "TuningCost":
        """The cost `to_dict` gave."""
        recipe = TuningRecipe(d["method"], d["steps"], d["passes_per_step"], d["source"], d["images_per_pass"],
                              d["class_images"], d["class_image_steps"])
        return cls(recipe, d["seconds_per_pass"], d["passes_timed"], tuple(d["latent_size"]))

    def to_dict(self) -> dict:
        return {"method": self.recipe.method, "steps": self.recipe.steps,
                "passes_per_step": self.recipe.passes_per_step, "source": self.recipe.source,
                "seconds_per_pass": self.seconds_per_pass, "passes_timed": self.passes_timed,
                "latent_size": list(self.latent_size), "training_seconds": self.total_seconds,
                "images_per_pass": self.recipe.images_per_pass, "class_images": self.recipe.class_images,
                "class_image_steps": self.recipe.class_image_steps}


def _training_batch(vae, pixels: torch.Tensor, scheduler, generator: torch.Generator):
    """Noisy latents, the noise and the timestep of one diffusion-loss step (DDPM's epsilon objective)."""
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    t = t.to(latents.device)
    return scheduler.add_noise(latents, noise, t), noise, t


def _prompt_ids(tokenizer, prompt: str, device) -> torch.Tensor:
    return tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _time_training(recipe: TuningRecipe, unet, vae, scheduler, pixels: torch.Tensor, params, lr: float, text,
                   restore=None, *, passes: int, warmup: int, seed: int) -> TuningCost:
    """Time training passes of the diffusion loss: `text()` gives the prompt embeddings (inside the pass, with
    gradients), AdamW at `lr` steps `params`, then `restore()` (if given) undoes what must not learn."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    pixels = pixels.to(unet.device, vae.dtype)
    optimizer = torch.optim.AdamW(params, lr=lr)

    def step():
        noisy, noise, t = _training_batch(vae, pixels, noise_scheduler, generator)
        with torch.enable_grad():
            loss = F.mse_loss(unet(noisy.to(unet.dtype), t, text()).sample.float(), noise.float())
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if restore is not None:
            restore()

    for _ in range(warmup):  # first passes allocate and pick kernels: not what a long run costs per step
        step()
    with stopwatch(unet.device) as timed:
        for _ in range(passes):
            step()
    return TuningCost(recipe, timed["seconds"] / passes, passes, (pixels.shape[-2] // 8, pixels.shape[-1] // 8))


def time_dreambooth_lora(unet, vae, text_encoder, tokenizer, scheduler, pixels: torch.Tensor, *, passes: int = 2,
                         warmup: int = 1, rank: int = 4, seed: int = 0,
                         recipe: TuningRecipe = DREAMBOOTH_LORA) -> TuningCost:
    """Time DreamBooth-LoRA training passes: LoRA (peft) on the UNet's attention, diffusion loss, AdamW step.

    The UNet gets a LoRA adapter named `facestudio_eval_dreambooth` that is deleted afterwards.

    Args:
        unet, vae, text_encoder, tokenizer: the base model's parts (the UNet without IP-Adapters).
        scheduler: a scheduler whose config gives the training noise schedule.
        pixels (`torch.Tensor`): `[1, 3, H, W]` in [-1, 1], the training photo at the training size.
        recipe (`TuningRecipe`): `DREAMBOOTH_LORA`, or `DREAMBOOTH_LORA_PRIOR` (each pass on the photo and a
            class image: the photo twice here, which costs the same).
    """
    from peft import LoraConfig

    ids = _prompt_ids(tokenizer, "a photo of sks person", unet.device)
    with torch.no_grad():
        text = text_encoder(ids)[0].to(unet.dtype).expand(recipe.images_per_pass, -1, -1)
    name = "facestudio_eval_dreambooth"
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name=name)
    try:
        return _time_training(recipe, unet, vae, scheduler, pixels.expand(recipe.images_per_pass, -1, -1, -1),
                              [p for p in unet.parameters() if p.requires_grad], 1e-4, lambda: text,
                              passes=passes, warmup=warmup, seed=seed)
    finally:
        unet.delete_adapters(name)
        unet.requires_grad_(False)


def time_textual_inversion(unet, vae, text_encoder, tokenizer, scheduler, pixels: torch.Tensor, *, passes: int = 2,
                           warmup: int = 1, seed: int = 0) -> TuningCost:
    """Time Textual Inversion passes: one new token's embedding trained through the text encoder and the
    frozen UNet with the diffusion loss (copies of the tokenizer and text encoder; the originals are untouched)."""
    tokenizer = copy.deepcopy(tokenizer)
    encoder = copy.deepcopy(text_encoder).requires_grad_(False)
    tokenizer.add_tokens(["<facestudio-person>"])
    token_id = tokenizer.convert_tokens_to_ids("<facestudio-person>")
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = encoder.get_input_embeddings()
    embeddings.weight.requires_grad_(True)
    original = embeddings.weight.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=original.device)
    keep[token_id] = False
    ids = _prompt_ids(tokenizer, "a photo of <facestudio-person>", unet.device)

    def restore():
        with torch.no_grad():  # only the new token learns (as in diffusers' example)
            embeddings.weight[keep] = original[keep]

    unet_grad = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    try:
        return _time_training(TEXTUAL_INVERSION, unet, vae, scheduler, pixels, [embeddings.weight], 5e-4,
                              lambda: encoder(ids)[0].to(unet.dtype), restore, passes=passes, warmup=warmup, seed=seed)
    finally:
        for p, g in zip(unet.parameters(), unet_grad):
            p.requires_grad_(g)
