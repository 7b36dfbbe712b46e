"""The training loop: masked-face reconstruction with accelerate, the base model frozen.

Habits of diffusers' training scripts and IP-Adapter's `tutorial_train.py`: only the trainable module goes
through `accelerator.prepare`; the frozen base is cast to the training precision while the trainable
parameters stay in float32; checkpoints are `accelerator.save_state` folders (weights, optimiser, learning
rate schedule, random states) plus a loadable guidance folder; `--resume latest` continues a run.

Every random draw of a step (the example, its condition drops, the noise, the timesteps, the VAE sample)
comes from generators seeded by `(seed, micro-batch number)`, so a resumed run repeats exactly the steps the
interrupted one would have taken: same loss at the same step.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FaceStudioError, first_line
from ..files import check_free_space, existing_ancestor, write_json
from ..request import DEFAULT_STEPS
from .dataset import ConditionDropout, FaceCache, ReconstructionDataset, StreamSampler
from .losses import diffusion_loss, diffusion_target, identity_loss, predicted_clean_latents
from .modules import GuidanceModules, layer_masks

logger = logging.getLogger(__name__)

STATE_NAME = "training_state.json"
CONFIG_NAME = "train_config.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainSettings:
    """Everything a training run depends on (written to `train_config.json`).

    Attributes:
        cache (`str`): face cache made by `prepare`.
        output (`str`): the run's folder: the trained guidance (`identity/`, `style/`), `checkpoints/`,
            `loss.png`, `samples/`, `train_config.json`.
        base_model (`str`): `"tiny"`, a diffusers folder or a hub id (SD 1.x / 2.x); stays frozen.
        image_encoder (`str`, *optional*): CLIP vision model for the style condition (`"tiny"`, a folder
            or a hub id); None trains the identity adapter alone.
        max_steps (`int`): optimiser steps.
        batch_size (`int`): examples per micro-batch and process.
        gradient_accumulation_steps (`int`): micro-batches per optimiser step.
        learning_rate, adam_weight_decay, max_grad_norm (`float`): AdamW and gradient clipping.
        lr_scheduler (`str`), lr_warmup_steps (`int`): `diffusers.optimization.get_scheduler` names.
        mixed_precision (`str`): `"auto"` (bf16 or fp16 on CUDA, none on CPU), `"no"`, `"fp16"`, `"bf16"`.
        seed (`int`): weights' initialisation and every random draw of training.
        checkpoint_every (`int`): steps between checkpoints (0: only at the end).
        checkpoints_total_limit (`int`, *optional*): oldest checkpoints beyond this many are deleted.
        sample_every (`int`): steps between loss curve and sample grid (0: only at the end; -1: never).
        sample_steps (`int`), num_samples (`int`): denoising steps and rows of a sample grid.
        drop_text, drop_identity, drop_style, drop_all (`float`): condition dropout rates.
        multi_identity (`float`): share of side-by-side multi-identity examples.
        max_identities (`int`): most people in one composite.
        identity_loss_weight (`float`): weight of the identity loss (0: off).
        identity_loss_max_timestep (`int`): the identity loss applies at this timestep or below.
        default_caption (`str`): caption of photos without one.
        resume (`str`, *optional*): `"latest"` (this output's newest checkpoint) or a checkpoint folder.
        cpu (`bool`): train on the CPU even when a GPU is there.
        num_workers (`int`): data loader processes.
    """

    cache: str
    output: str
    base_model: str = "tiny"
    image_encoder: str | None = "tiny"
    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = None
    sample_every: int = 500
    sample_steps: int = DEFAULT_STEPS
    num_samples: int = 4
    drop_text: float = 0.05
    drop_identity: float = 0.05
    drop_style: float = 0.05
    drop_all: float = 0.05
    multi_identity: float = 0.25
    max_identities: int = 2
    identity_loss_weight: float = 0.0
    identity_loss_max_timestep: int = 500
    default_caption: str = ""
    resume: str | None = None
    cpu: bool = False
    num_workers: int = 0

    def check(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "sample_steps", "num_samples"):
            if getattr(self, name) < 1:
                raise FaceStudioError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise FaceStudioError(f"learning rate must be a finite number > 0, got {self.learning_rate}")
        if not 0 <= self.seed < 2**63:
            raise FaceStudioError(f"seed {self.seed}: must be between 0 and 2**63 - 1")
        _check_scheduler(self.lr_scheduler)
        if self.mixed_precision == "fp16" and (self.cpu or not (torch.cuda.is_available()
                                                               or torch.backends.mps.is_available())):
            raise FaceStudioError("mixed precision fp16 needs a GPU (on the CPU attention meets fp16 and fp32 "
                                  "tensors): use bf16 or no on the CPU")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise FaceStudioError(f"mixed precision {self.mixed_precision!r}: use auto, no, fp16 or bf16")
        for name in ("identity_loss_weight", "max_grad_norm", "adam_weight_decay", "num_workers", "lr_warmup_steps"):
            value = getattr(self, name, 0)
            if not math.isfinite(value) or value < 0:
                raise FaceStudioError(f"{name.replace('_', ' ')} must be a finite number >= 0, got {value}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise FaceStudioError(f"checkpoints total limit must be at least 1 (or not given), got "
                                  f"{self.checkpoints_total_limit}")
        self.dropout().check()

    def dropout(self) -> ConditionDropout:
        return ConditionDropout(self.drop_text, self.drop_identity, 0.0 if self.image_encoder is None
                                else self.drop_style, self.drop_all)


@dataclass
class TrainResult:
    """What a run did: the loss of every step (earlier runs' too, when resumed), where it wrote, and the
    pipeline with the trained adapters in it (to sample from it at once)."""

    output: Path
    losses: list[float] = field(default_factory=list)
    start_step: int = 0
    seconds: float = 0.0
    pipeline: object = None

    def first_last_means(self, count: int = 10) -> tuple[float, float]:
        return first_last_means(self.losses, count)


def first_last_means(losses: list[float], count: int = 10) -> tuple[float, float]:
    """The mean loss of the first and of the last `count` steps."""
    return float(np.mean(losses[:count])), float(np.mean(losses[-count:]))


def train(settings: TrainSettings, progress: bool = True) -> TrainResult:
    """Train the guidance module on a face cache; see `TrainSettings`.

    Returns:
        `TrainResult`. The trained guidance is in `settings.output`, loadable with
        `FaceStudioPipeline.from_pretrained(base, guidance=settings.output)` or `pipe.load_guidance(...)`.

    Raises:
        FaceStudioError: bad settings, an unreadable cache, a missing checkpoint, or an output folder that
            already holds checkpoints of another run (resume it or choose another folder).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm import tqdm

    settings.check()
    output = Path(settings.output)
    resume_dir = _resume_dir(settings, output)
    state = None if resume_dir is None else _read_state(resume_dir)
    cache = FaceCache(settings.cache)
    accelerator = Accelerator(mixed_precision=_mixed_precision(settings), cpu=settings.cpu,
                              gradient_accumulation_steps=settings.gradient_accumulation_steps,
                              project_config=ProjectConfiguration(project_dir=str(output)))
    parts = build_parts(settings, accelerator)
    guidance, optimizer, scheduler = accelerator.prepare(parts.guidance, parts.optimizer, parts.lr_scheduler)
    losses, start_step = [], 0
    if resume_dir is not None:
        try:
            accelerator.load_state(str(resume_dir))
        except Exception as e:  # accelerate, torch and safetensors each raise their own types for damaged files
            raise FaceStudioError(f"--resume {resume_dir}: damaged checkpoint ({type(e).__name__}: {first_line(e)}); "
                                  "resume from another one or start a new --output") from None
        losses, start_step = state["losses"], state["step"]
        logger.info("resumed from %s at step %d", resume_dir, start_step)
        _note_changed_settings(state["settings"], settings)
    if accelerator.is_main_process:
        _check_room(settings, output, parts.guidance, start_step)
    output.mkdir(parents=True, exist_ok=True)

    dataset = ReconstructionDataset(cache, settings.seed, settings.dropout(), settings.multi_identity,
                                    settings.max_identities if settings.multi_identity > 0 else 1,
                                    settings.default_caption)
    accumulation = settings.gradient_accumulation_steps
    first_micro = start_step * accumulation
    sampler = StreamSampler(first_micro * settings.batch_size, settings.max_steps * accumulation * settings.batch_size,
                            accelerator.process_index, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler,
                                         num_workers=settings.num_workers)
    held = [cache.load(i) for i in range(min(settings.num_samples, len(cache)))]

    started = time.monotonic()
    step, micro, pending = start_step, first_micro, []
    bar = tqdm(total=settings.max_steps, initial=step, desc="train", unit="step", file=sys.stderr,
               disable=(not progress or not accelerator.is_local_main_process) or None, dynamic_ncols=True)
    for batch in loader:
        with accelerator.accumulate(guidance):
            loss = training_loss(parts, guidance, accelerator, batch, step_generator(settings.seed, micro,
                                                                                       accelerator.process_index))
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings.max_grad_norm > 0:
                accelerator.clip_grad_norm_(guidance.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        pending.append(loss.detach().float())
        if not accelerator.sync_gradients:
            continue
        step += 1
        losses.append(accelerator.gather(torch.stack(pending).mean()[None]).mean().item())
        pending = []
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if accelerator.is_main_process:
            if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < settings.max_steps:
                _save_checkpoint(accelerator, parts, settings, output, step, losses)
            if settings.sample_every > 0 and step % settings.sample_every == 0 and step < settings.max_steps:
                _report(parts, accelerator, settings, output, step, losses, held)
        if step >= settings.max_steps:
            break
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and step > start_step:
        _save_checkpoint(accelerator, parts, settings, output, step, losses)
        if settings.sample_every >= 0:
            _report(parts, accelerator, settings, output, step, losses, held)
        parts.pipe.save_adapters(output)
        _write_train_config(output, settings, step, losses, accelerator.mixed_precision)
    accelerator.end_training()
    return TrainResult(output, losses, start_step, time.monotonic() - started, parts.pipe)


# ---------------------------------------------------------------------------------------------------------- setup


@dataclass
class TrainingParts:
    """The models and optimiser state of a run (`build_parts`)."""

    pipe: object
    guidance: GuidanceModules
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    noise_scheduler: object
    style_encoder: object
    recognizer_net: object
    weight_dtype: torch.dtype
    settings: TrainSettings


def _check_scheduler(name: str) -> None:
    """`name` is one of diffusers' schedules that need no more than warmup and total steps (piecewise_constant
    needs step rules the command does not take)."""
    from diffusers.optimization import SchedulerType

    usable = [t.value for t in SchedulerType if t is not SchedulerType.PIECEWISE_CONSTANT]
    if name not in usable:
        raise FaceStudioError(f"lr scheduler {name!r}: use one of {', '.join(usable)}")


def _mixed_precision(settings: TrainSettings) -> str:
    if settings.mixed_precision != "auto":
        return settings.mixed_precision
    if settings.cpu or not torch.cuda.is_available():
        return "no"  # CPU autocast gains little and costs accuracy
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def build_parts(settings: TrainSettings, accelerator) -> TrainingParts:
    """The base pipeline with fresh adapters, frozen but for the guidance module, on the training device."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from ..faces.analysis import FaceAnalyzer
    from ..guidance import identity as idg
    from ..guidance import style as sty
    from ..models import load_base_pipeline
    from ..pipeline import FaceStudioPipeline

    pipe = load_base_pipeline(settings.base_model, FaceStudioPipeline, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cross = pipe.unet.config.cross_attention_dim
    analyzer = FaceAnalyzer()
    id_config = idg.IdentityAdapterConfig(recognizer=analyzer.recognizer.name, cross_attention_dim=cross)
    kwargs = dict(identity=idg.new_identity_adapter(pipe.unet, id_config, seed=settings.seed),
                  identity_config=id_config)
    encoder = None
    if settings.image_encoder is not None:
        encoder = sty.load_style_encoder(settings.image_encoder)
        st_config = sty.StyleAdapterConfig(image_encoder=settings.image_encoder, image_embed_dim=encoder.embed_dim,
                                           cross_attention_dim=cross)
        kwargs.update(style=sty.new_style_adapter(pipe.unet, st_config, seed=settings.seed + 1),
                      style_config=st_config, style_encoder=encoder)
    pipe.load_adapters(face_analyzer=analyzer, **kwargs)

    guidance = GuidanceModules(pipe.unet, pipe.facestudio_adapters)
    frozen = [pipe.unet, pipe.vae, pipe.text_encoder] + ([encoder.model] if encoder is not None else [])
    guidance.freeze_base(*frozen)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for module in frozen:
        module.to(accelerator.device).eval()
        if weight_dtype != torch.float32:
            module.to(dtype=weight_dtype)
    guidance.to(torch.float32)  # trainable weights stay float32 under mixed precision
    recognizer_net = None
    if settings.identity_loss_weight > 0:
        from ..faces.dlib_resnet import DlibFaceResNet

        recognizer_net = DlibFaceResNet.from_dat().to(accelerator.device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(guidance.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.adam_weight_decay)
    lr_scheduler = get_scheduler(settings.lr_scheduler, optimizer,
                                 num_warmup_steps=settings.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=settings.max_steps * accelerator.num_processes)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return TrainingParts(pipe, guidance, optimizer, lr_scheduler, noise_scheduler, encoder, recognizer_net,
                         weight_dtype, settings)


# ---------------------------------------------------------------------------------------------------------- a step


def step_generator(seed: int, micro: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch: the same numbers for the same step in every run."""
    state = np.random.SeedSequence([seed, micro, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


#: The batch's inputs used on the training device (the pixels go there in the VAE's dtype, the masked
#: condition and the style drops are read by `_style_embeddings`).
_DEVICE_INPUTS = ("id_embeddings", "id_detail", "id_masks", "id_present", "id_landmarks")


def training_loss(parts: TrainingParts, guidance, accelerator, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Diffusion loss of one micro-batch (plus the weighted identity loss when enabled)."""
    pipe, settings, device, dtype = parts.pipe, parts.settings, accelerator.device, parts.weight_dtype
    scaling = pipe.vae.config.scaling_factor
    with torch.no_grad():
        pixels = batch["pixel_values"].to(device, dtype)
        posterior = pipe.vae.encode(pixels).latent_dist
        latents = (posterior.mean + posterior.std * _randn(posterior.mean.shape, generator, posterior.mean)) * scaling
        text = pipe.encode_prompt(list(batch["caption"]), device, 1, False)[0]
        style = _style_embeddings(parts.style_encoder, batch, device)
    noise = _randn(latents.shape, generator, latents)
    count = parts.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, count, (latents.shape[0],), generator=generator).to(device)
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    on_device = {k: batch[k].to(device) for k in _DEVICE_INPUTS}
    masks = layer_masks(parts.guidance.adapters, on_device["id_masks"], tuple(latents.shape[-2:]))
    with accelerator.autocast():
        tokens = guidance(on_device, style)
        prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": tokens},
                               cross_attention_kwargs={"ip_adapter_masks": masks}).sample
    loss = diffusion_loss(prediction, diffusion_target(parts.noise_scheduler, latents, noise, timesteps))
    if parts.recognizer_net is not None:
        low_noise = timesteps <= settings.identity_loss_max_timestep
        if low_noise.any():
            clean = predicted_clean_latents(parts.noise_scheduler, noisy[low_noise], prediction[low_noise],
                                            timesteps[low_noise])
            with accelerator.autocast():
                images = pipe.vae.decode(clean.to(dtype) / scaling).sample
            extra = identity_loss(parts.recognizer_net, images, on_device["id_landmarks"][low_noise],
                                  on_device["id_embeddings"][low_noise], on_device["id_present"][low_noise])
            if extra is not None:
                loss = loss + settings.identity_loss_weight * extra
    return loss


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Normal noise drawn on the CPU (the same numbers on every device), then moved."""
    return torch.randn(shape, generator=generator).to(like.device, like.dtype)


def _style_embeddings(encoder, batch: dict, device) -> torch.Tensor | None:
    """`[B, E]` image embeddings of the masked conditioning images; zeros where style is dropped."""
    if encoder is None:
        return None
    embeds = encoder.embeds(batch["conditioning"].numpy()).float()  # the encoder is on `device`, in training dtype
    keep = (~batch["drop_style"]).to(device, embeds.dtype)[:, None]
    return embeds * keep


# ---------------------------------------------------------------------------------------------------------- outputs


def _save_checkpoint(accelerator, parts: TrainingParts, settings: TrainSettings, output: Path, step: int,
                     losses: list[float]) -> Path:
    """`checkpoints/checkpoint-STEP`: accelerate's state, the loadable guidance, and the loss history."""
    folder = output / "checkpoints" / f"checkpoint-{step}"
    try:
        accelerator.save_state(str(folder))
    except Exception as e:  # safetensors and torch report a full disk in their own error types
        shutil.rmtree(folder, ignore_errors=True)  # half a checkpoint is none (its state file comes last)
        if shutil.disk_usage(existing_ancestor(folder)).free < _checkpoint_bytes(parts.guidance):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder)) from e
        raise
    parts.pipe.save_adapters(folder / "guidance")
    (folder / STATE_NAME).write_text(json.dumps({"step": step, "losses": losses, "settings": asdict(settings)}))
    limit = settings.checkpoints_total_limit
    if limit:
        for old in _checkpoints(output)[:-limit]:
            shutil.rmtree(old)
    return folder


def _checkpoint_bytes(guidance) -> int:
    """Most bytes one checkpoint takes: the trainable weights in accelerate's state and in the loadable
    guidance copy, and AdamW's two moments, all float32; 1 MB more for the small files."""
    weights = sum(p.numel() for p in guidance.parameters() if p.requires_grad) * 4
    return 4 * weights + 2**20


def _check_room(settings: TrainSettings, output: Path, guidance, start_step: int) -> None:
    """The checkpoints kept at once and the final guidance fit on --output's file system, before training."""
    every = settings.checkpoint_every
    count = 1 + (max(0, settings.max_steps - 1 - start_step) // every if every else 0)
    if settings.checkpoints_total_limit:
        count = min(count, settings.checkpoints_total_limit + 1)  # the oldest goes after the newest is written
    needed = count * _checkpoint_bytes(guidance) + _checkpoint_bytes(guidance) // 4
    check_free_space(output, needed, f"{count} checkpoint{'s' if count > 1 else ''} and the trained guidance")


def _checkpoints(output: Path) -> list[Path]:
    """This output's checkpoint folders, oldest first."""
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and
             (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def _resume_dir(settings: TrainSettings, output: Path) -> Path | None:
    existing = _checkpoints(output)
    if settings.resume is None:
        if existing:
            raise FaceStudioError(f"{output} already has checkpoints ({existing[-1].name}): continue with "
                                  "--resume latest, or choose another --output")
        return None
    if settings.resume == "latest":
        if not existing:
            raise FaceStudioError(f"--resume latest: {output} has no checkpoint yet")
        return existing[-1]
    folder = Path(settings.resume)
    if not (folder / STATE_NAME).is_file():
        raise FaceStudioError(f"--resume {settings.resume}: not a training checkpoint (no {STATE_NAME})")
    return folder


def _read_state(folder: Path) -> dict:
    """A checkpoint's `training_state.json` (step, losses, settings), checked before anything loads."""
    path = folder / STATE_NAME
    try:
        state = json.loads(path.read_text())
    except ValueError as e:
        raise FaceStudioError(f"{path}: unreadable ({e}); resume from another checkpoint") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("losses"), list)
            and isinstance(state.get("settings"), dict)):
        raise FaceStudioError(f"{path}: damaged (step, losses and settings expected); resume from another checkpoint")
    return state


#: Settings that may change on resume without changing what the earlier steps were.
_RESUMABLE_CHANGES = {"output", "resume", "max_steps", "checkpoint_every", "checkpoints_total_limit", "sample_every",
                      "sample_steps", "num_samples", "num_workers", "cpu"}


def _note_changed_settings(before: dict, settings: TrainSettings) -> None:
    """Say which settings differ from the checkpoint's run: the curve then no longer continues the same."""
    changed = sorted(k for k, v in asdict(settings).items() if k not in _RESUMABLE_CHANGES and before.get(k) != v)
    if changed:
        logger.warning("resuming with settings other than the checkpoint's (%s): the run continues, but not as the "
                       "first one would have", ", ".join(f"{k}: {before.get(k)!r} -> {getattr(settings, k)!r}"
                                                         for k in changed))


def _report(parts: TrainingParts, accelerator, settings: TrainSettings, output: Path, step: int, losses: list[float],
            held: list[dict]) -> None:
    from .reporting import plot_loss_curve, sample_grid

    plot_loss_curve(losses, output / "loss.png")
    sample_grid(parts.pipe, held, settings.sample_steps, settings.seed, output / "samples" / f"step-{step:06d}.png",
                accelerator.autocast)


def _write_train_config(output: Path, settings: TrainSettings, step: int, losses: list[float],
                        precision: str) -> None:
    from .. import __version__

    first, last = first_last_means(losses, 10)
    data = {"facestudio": __version__, "base_model": settings.base_model, "image_encoder": settings.image_encoder,
            "steps": step, "mixed_precision": precision, "loss_first_10_mean": first,
            "loss_last_10_mean": last, "settings": asdict(settings)}
    write_json(output / CONFIG_NAME, data)
