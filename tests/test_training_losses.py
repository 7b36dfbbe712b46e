"""The training losses: the one-step clean estimate, the differentiable face alignment, the identity loss."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from facestudio.faces.alignment import align_face
from facestudio.faces.dlib_resnet import DlibFaceResNet
from facestudio.models import sd15_scheduler
from facestudio.training.losses import (aligned_faces, diffusion_target, identity_loss,
                                        predicted_clean_latents)


@pytest.fixture(scope="module")
def recognizer():
    return DlibFaceResNet.from_dat().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def portraits(faces_dir, analyzer):
    """Obama and Biden shrunk so that their faces are about the size of dlib's chip (no aliasing either way)."""
    out = {}
    for name in ("obama.jpg", "biden.jpg"):
        photo = Image.open(faces_dir / name).convert("RGB")
        face = analyzer.detect(np.asarray(photo))[0]
        scale = 80 / face.width
        small = np.array(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS))
        out[name] = (small, analyzer.detect(small)[0].landmark_array())
    return out


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_clean_estimate_inverts_the_noising(prediction_type):
    scheduler = DDPMScheduler.from_config(sd15_scheduler().config, prediction_type=prediction_type)
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([10, 500, 990])
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    assert torch.allclose(predicted_clean_latents(scheduler, noisy, target, timesteps), latents, atol=1e-3)
    assert not torch.allclose(predicted_clean_latents(scheduler, noisy, target + 0.1, timesteps), latents, atol=1e-3)


def test_the_differentiable_crop_matches_align_face(portraits, analyzer):
    image, landmarks = portraits["obama.jpg"]
    reference = align_face(image, landmarks, "dlib", 150).image.astype(np.float32)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    crop = aligned_faces(pixels, [landmarks])[0].permute(1, 2, 0).numpy()
    assert crop.shape == (150, 150, 3)
    assert np.abs(crop - reference).mean() < 4.0  # of 255: the same pixels, interpolated a little differently
    ours = analyzer.recognizer.embed_crops(np.clip(crop.round(), 0, 255).astype(np.uint8)[None])[0]
    theirs = analyzer.recognizer.embed_crops(reference.astype(np.uint8)[None])[0]
    assert float(ours @ theirs) > 0.99


def test_the_identity_loss_tells_people_apart_and_has_gradient(portraits, analyzer, recognizer):
    embeddings = {name: analyzer.embed(image).vector.copy() for name, (image, _) in portraits.items()}
    image, landmarks = portraits["obama.jpg"]
    pixels = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    marks = torch.from_numpy(landmarks)[None, None]
    present = torch.tensor([[True]])
    same = identity_loss(recognizer, pixels, marks, torch.from_numpy(embeddings["obama.jpg"])[None, None], present)
    other = identity_loss(recognizer, pixels, marks, torch.from_numpy(embeddings["biden.jpg"])[None, None], present)
    assert same.item() < 0.03 and other.item() > 0.1
    other.backward()
    assert pixels.grad.abs().sum() > 0
    assert identity_loss(recognizer, pixels, marks, marks.new_zeros(1, 1, 128), torch.tensor([[False]])) is None
