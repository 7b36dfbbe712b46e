"""Faces into a given image: which scene faces the identities take, the scene kept outside them in latent
space during denoising, and its own pixels pasted back after decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from ..errors import FaceStudioError, NoFaceError
from ..faces.regions import dilated_face_mask

if TYPE_CHECKING:
    import torch

#: A scene face's ellipse is grown by this share of the face size: the area that is regenerated.
FACE_GROWTH = 0.1


def check_scene_faces(found: int, count: int, chosen: Sequence[int] | None) -> None:
    """Raise unless `count` identities fit a scene with `found` faces (`chosen`: their indices, 0 the largest).

    The one rule for the call and for checks made earlier from a stored face count (the server's submission).
    """
    if not found:
        raise NoFaceError("scene image: no face found to put the identities into")
    if chosen is not None:
        if len(chosen) != count or any(not 0 <= c < found for c in chosen):
            raise FaceStudioError(f"scene faces {list(chosen)}: need {count} indices among the scene's "
                                  f"{found} faces (0 is the largest)")
    elif found < count:
        raise FaceStudioError(f"scene image has {found} face(s) but {count} identities were given")


def scene_targets(analyzer, scene: np.ndarray, count: int, chosen: Sequence[int] | None) -> list:
    """The scene's faces that the identities replace: chosen by index, else the `count` largest, left to right."""
    faces = analyzer.detect(scene)
    check_scene_faces(len(faces), count, chosen)
    if chosen is not None:
        return [faces[c] for c in chosen]
    return sorted(faces[:count], key=lambda f: f.center[0])


def dilated_face(face, width: int, height: int) -> np.ndarray:
    """A scene face's ellipse grown by `FACE_GROWTH` of the face size, as float32 0/1: the area regenerated."""
    return dilated_face_mask(face, width, height, FACE_GROWTH).astype(np.float32)


def feathered(mask: np.ndarray, width: int) -> np.ndarray:
    """A soft-edged version of a binary mask that is exactly 0 wherever the mask is 0."""
    sigma = max(1.0, width / 128)
    soft = cv2.GaussianBlur(cv2.erode(mask, np.ones((3, 3), np.float32), iterations=max(1, round(2 * sigma))),
                            (0, 0), sigma)
    return np.where(mask > 0, soft, 0.0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class SceneEdit:
    """A scene image at the output size and the area of it that is regenerated.

    Attributes:
        image (`np.ndarray`): `[H, W, 3]` uint8 RGB scene at the output size.
        regenerated (`np.ndarray`): `[H, W]` float32, 1 where a face is regenerated (the union of the faces).
        alpha (`np.ndarray`): `regenerated` feathered: the paste-back weight of the generated pixels.
    """

    image: np.ndarray
    regenerated: np.ndarray
    alpha: np.ndarray

    @classmethod
    def from_face_masks(cls, image: np.ndarray, face_masks: np.ndarray) -> "SceneEdit":
        union = np.maximum.reduce(list(face_masks))
        return cls(image, union, feathered(union, image.shape[1]))

    def latents(self, encode: Callable[[torch.Tensor], torch.Tensor], batch: int, generator, dtype,
                device) -> "SceneBlend":
        """The scene in latent space (`encode`: pixels in [-1, 1] -> scaled latents), the fixed noise that
        re-noises it, and the latent mask of what is generated."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        pixels = torch.from_numpy(self.image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        scene_latents = encode(pixels.to(device)).to(dtype).expand(batch, -1, -1, -1)
        noise = randn_tensor(scene_latents.shape, generator=generator, device=device, dtype=dtype)
        h, w = scene_latents.shape[-2:]
        blend = (cv2.resize(self.regenerated, (w, h), interpolation=cv2.INTER_AREA) > 0).astype(np.float32)
        return SceneBlend(scene_latents, noise, torch.from_numpy(blend).to(device, dtype)[None, None])

    def paste(self, images: np.ndarray) -> np.ndarray:
        """Generated images `[B, H, W, 3]` in [0, 1] inside `alpha`, the scene's own pixels (exactly, after uint8
        rounding) elsewhere."""
        alpha = self.alpha
        scene_f = self.image.astype(np.float32) / 255.0
        out = images * alpha[None, ..., None] + scene_f[None] * (1 - alpha[None, ..., None])
        out = np.round(out * 255.0) / 255.0
        out[:, alpha <= 0] = scene_f[alpha <= 0]
        return out


@dataclass(frozen=True, eq=False)
class SceneBlend:
    """The scene's latents, their fixed noise, and the `[1, 1, h, w]` mask where latents are generated."""

    latents: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor

    def keep_scene(self, latents: torch.Tensor, scheduler, timesteps, i: int) -> torch.Tensor:
        """After step `i`: the scene outside the faces, re-noised to the next step's level (clean after the last)."""
        known = self.latents if i + 1 == len(timesteps) else \
            scheduler.add_noise(self.latents, self.noise, timesteps[i + 1:i + 2])
        return self.mask * latents + (1 - self.mask) * known
