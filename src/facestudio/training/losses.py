"""Training losses: the diffusion loss, and an identity loss on the face of the predicted clean image.

The diffusion loss is the usual one of latent diffusion training (Rombach et al. 2022, eq. 2): the squared
error of the UNet's prediction against the scheduler's target (the noise, or v). The identity loss
(as in PuLID, Guo et al. 2024, sec. 3.2, here with dlib's recogniser) decodes the one-step estimate of the
clean latent, aligns each person's face with a differentiable warp onto dlib's template and compares its
embedding with the reference's: `1 - cos`. It is only meaningful at low noise, so it is applied to examples
whose timestep is at most a limit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..faces.alignment import TEMPLATES, estimate_similarity


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict for the scheduler's `prediction_type`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"training for prediction type {kind!r} is not supported (epsilon or v_prediction)")


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, in float32 whatever the training precision."""
    return F.mse_loss(prediction.float(), target.float())


def predicted_clean_latents(scheduler, noisy: torch.Tensor, prediction: torch.Tensor,
                            timesteps: torch.Tensor) -> torch.Tensor:
    """The one-step estimate of x0 from x_t and the prediction (DDPM, Ho et al. 2020, eq. 15)."""
    alpha_bar = scheduler.alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
    noisy, prediction = noisy.float(), prediction.float()
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction
    return (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()


def alignment_grid(landmarks: np.ndarray, image_size: tuple[int, int], template: str = "dlib",
                   size: int | None = None) -> torch.Tensor:
    """The `grid_sample` grid `[size, size, 2]` that cuts the aligned face with these landmarks out of an image.

    The same similarity transform as `faces.align_face` (Umeyama onto the template), expressed in
    `grid_sample`'s normalised coordinates (`align_corners=False`: pixel i's centre is at `(2i + 1) / n - 1`).
    """
    tpl = TEMPLATES[template]
    size = size or tpl.reference_size
    width, height = image_size
    to_crop = np.vstack([estimate_similarity(landmarks, tpl.at(size)), [0, 0, 1]])
    from_normal_crop = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
    to_normal_image = np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    theta = (to_normal_image @ np.linalg.inv(to_crop) @ from_normal_crop)[:2]
    theta = torch.from_numpy(theta).float()[None]
    return F.affine_grid(theta, [1, 3, size, size], align_corners=False)[0]


def aligned_faces(images: torch.Tensor, landmarks: list[np.ndarray], template: str = "dlib",
                  size: int | None = None) -> torch.Tensor:
    """Differentiable face crops `[K, 3, S, S]` of `images` `[K, 3, H, W]`, one per `[5, 2]` landmark set."""
    height, width = images.shape[-2:]
    grids = torch.stack([alignment_grid(np.asarray(lm, np.float64), (width, height), template, size)
                         for lm in landmarks]).to(images.device, images.dtype)
    return F.grid_sample(images, grids, mode="bilinear", padding_mode="zeros", align_corners=False)


def identity_loss(recognizer_net, images: torch.Tensor, landmarks: torch.Tensor, embeddings: torch.Tensor,
                  present: torch.Tensor) -> torch.Tensor | None:
    """`1 - cos` between the faces in `images` and the reference embeddings, averaged over present faces.

    Args:
        recognizer_net (`DlibFaceResNet`): frozen, differentiable recogniser (chips in 0..255).
        images (`torch.Tensor`): `[B, 3, H, W]` in [-1, 1], e.g. the decoded predicted clean image.
        landmarks (`torch.Tensor`): `[B, N, 5, 2]` face landmarks in the images' pixels.
        embeddings (`torch.Tensor`): `[B, N, 128]` normalised reference embeddings.
        present (`torch.Tensor`): `[B, N]` which slots hold a real (not dropped, not padding) identity.

    Returns:
        The loss, or None when no face is present.
    """
    rows, slots = torch.nonzero(present, as_tuple=True)
    if rows.numel() == 0:
        return None
    pixels = (images[rows].float().clamp(-1, 1) + 1) * 127.5
    chips = aligned_faces(pixels, list(landmarks[rows, slots].cpu().numpy()))
    predicted = F.normalize(recognizer_net(chips), dim=-1)
    reference = F.normalize(embeddings[rows, slots].float(), dim=-1)
    return (1 - (predicted * reference).sum(-1)).mean()
