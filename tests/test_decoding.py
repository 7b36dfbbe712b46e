"""The tiny decoder (AutoencoderTiny, built in code in TAESD's shape): final images by it, and a preview per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_facestudio_pipeline
from facestudio.decoding import load_tiny_decoder, tiny_decode
from facestudio.errors import FaceStudioError, ModelFileError
from facestudio.models import tiny_autoencoder

SIZE = dict(height=64, width=64, num_inference_steps=3)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_facestudio_pipeline()
    load_tiny_decoder(pipe, tiny_autoencoder())
    return pipe


def run(pipe, **kw):
    return pipe("a photo", generator=torch.Generator().manual_seed(0), **SIZE, **kw)


def test_the_tiny_decoder_decodes_the_same_latents(pipe):
    latents = run(pipe, output_type="latent").images
    tiny = run(pipe, decoder="tiny", output_type="np").images
    full = run(pipe, output_type="np").images
    expected = pipe.image_processor.postprocess(tiny_decode(pipe.tiny_vae, latents), output_type="np")
    assert np.abs(tiny - expected).max() <= 1e-5
    assert np.abs(tiny - full).max() > 1e-2  # another decoder, another image
    assert pipe.tiny_vae is pipe.components["tiny_vae"]  # a registered component: .to() moves it


def test_every_step_gives_a_preview(pipe):
    seen = []
    out = run(pipe, preview=lambda step, total, image: seen.append((step, total, image.size)))
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)] and all(size == (64, 64) for *_, size in seen)
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(run(pipe).images[0]))  # previews change nothing


def test_tiny_without_a_tiny_decoder_is_refused():
    bare = tiny_facestudio_pipeline()
    with pytest.raises(FaceStudioError, match="no tiny decoder is loaded"):
        run(bare, decoder="tiny")
    with pytest.raises(FaceStudioError, match="previews need the tiny decoder"):
        run(bare, preview=lambda *a: None)
    with pytest.raises(FaceStudioError, match="'full'.*'tiny'"):
        run(bare, decoder="small")
    with pytest.raises(ModelFileError, match="facestudio download taesd"):
        load_tiny_decoder(bare, "/nonexistent/taesd")


def test_the_command_line_decodes_with_the_tiny_decoder(tmp_path):
    import subprocess
    import sys

    from facestudio.imaging import read_png_metadata

    done = subprocess.run([sys.executable, "-m", "facestudio.cli", "generate", "--prompt", "x", "--base-model", "tiny",
                           "--decoder", "tiny", "--steps", "2", "--width", "64", "--height", "64", "--output",
                           str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_png_metadata(tmp_path / "000-seed0.png")["decoder"] == "tiny"
