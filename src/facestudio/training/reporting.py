"""What a training run shows while it runs: the loss curve and sample grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import write_atomically
from ..guidance.identity import Identity


def plot_loss_curve(losses: list[float], path: Path, smoothing: int = 10) -> Path:
    """Loss per step and its running mean over `smoothing` steps, as a PNG (written atomically)."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switch

    steps = np.arange(1, len(losses) + 1)
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    axes.plot(steps, losses, lw=0.8, alpha=0.4, label="loss")
    if len(losses) >= smoothing:
        mean = np.convolve(losses, np.ones(smoothing) / smoothing, mode="valid")
        axes.plot(steps[smoothing - 1:], mean, lw=1.8, label=f"mean of {smoothing} steps")
    axes.set_xlabel("step")
    axes.set_ylabel("diffusion loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png"))
    return path


@torch.no_grad()
def sample_grid(pipe, examples: list[dict], steps: int, seed: int, path: Path, autocast) -> Path:
    """One row per held example: its face, the masked condition, the photo, and what the model makes of them.

    Args:
        pipe (`FaceStudioPipeline`): with the adapters being trained.
        examples (`list[dict]`): cache samples (`FaceCache.load`).
        steps (`int`): denoising steps per image.
        seed (`int`): the same noise at every sampling, so grids of different steps compare.
        path (`Path`): where the PNG goes.
        autocast: a context manager for the training precision (`accelerator.autocast`).
    """
    from ..imaging import ai_generated_metadata, contact_sheet, save_png
    from ..pipeline import IdentityInput
    from .dataset import masked_condition

    images, labels = [], []
    for i, sample in enumerate(examples):
        size = sample["image"].shape[0]
        condition = masked_condition(sample["image"], sample["face_mask"])
        identity = Identity(sample["embedding"], sample["detail"].astype(np.float32), "dlib", f"sample {i}")
        style = Image.fromarray(condition) if any(a.kind == "style" for a in pipe.facestudio_adapters) else None
        with autocast():
            made = pipe(sample["caption"] or "a photo of a person", identities=[IdentityInput(identity=identity)],
                        style_image=style, num_inference_steps=steps, height=size, width=size,
                        generator=torch.Generator().manual_seed(seed + i)).images[0]
        face = Image.fromarray(sample["aligned"]).resize((size, size), Image.LANCZOS)
        images += [face, Image.fromarray(condition), Image.fromarray(sample["image"]), made]
        labels += ["identity", "condition", "photo", "generated"]
    metadata = ai_generated_metadata({"training_samples": len(examples), "steps": steps, "seed": seed,
                                      "generated_column": 4})
    save_png(contact_sheet(images, labels, columns=4), path, metadata)
    return path
