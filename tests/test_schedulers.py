"""Samplers by name: each made from the base scheduler's config, each giving what diffusers' own pipeline gives."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from conftest import tiny_facestudio_pipeline
from facestudio.errors import FaceStudioError
from facestudio.models import tiny_components
from facestudio.request import GenerationSettings
from facestudio.sampling.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, make_scheduler

SIZE = dict(height=64, width=64, num_inference_steps=3)


@pytest.fixture(scope="module")
def pipe():
    return tiny_facestudio_pipeline()


def test_every_sampler_keeps_the_base_noise_schedule(pipe):
    for name, sampler in SCHEDULERS.items():
        scheduler = make_scheduler(name, pipe.scheduler)
        assert type(scheduler).__name__ == sampler.class_name
        assert scheduler is not pipe.scheduler
        for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type"):
            assert scheduler.config[key] == pipe.scheduler.config[key], (name, key)
        for key, value in sampler.options.items():
            assert scheduler.config[key] == value
    assert make_scheduler("euler-a", pipe.scheduler, timestep_spacing="trailing").config.timestep_spacing == "trailing"
    assert pipe.scheduler.config.timestep_spacing == "leading"  # the base is never changed


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_sampler_matches_diffusers_own_pipeline(pipe, name):
    """No identity: facestudio's call is ordinary guidance, so it must equal StableDiffusionPipeline with the same
    scheduler class and options (TCD at its own gamma, 0.3: diffusers' pipeline would pass eta=0)."""
    sampler = SCHEDULERS[name]
    parts = {k: v for k, v in tiny_components().items() if k != "image_encoder"}
    parts["scheduler"] = sampler.scheduler_class.from_config(parts["scheduler"].config, **sampler.options)
    base = StableDiffusionPipeline(**parts)
    base.set_progress_bar_config(disable=True)
    expected = base("a portrait photo", guidance_scale=7.5, generator=torch.Generator().manual_seed(3),
                    eta=0.3 if name == "tcd" else 0.0, output_type="np", **SIZE).images
    ours = pipe("a portrait photo", scheduler=name, generator=torch.Generator().manual_seed(3), output_type="np",
                **SIZE)
    assert np.abs(ours.images - expected).max() <= 1e-4
    assert ours.settings["scheduler"] == name and ours.settings["scheduler_class"] == sampler.class_name


def test_samplers_differ_and_the_default_is_euler_ancestral(pipe):
    images = {name: pipe("a photo", scheduler=name, generator=torch.Generator().manual_seed(0), output_type="np",
                         **SIZE).images for name in ("euler-a", "ddim", "dpmpp-2m-karras")}
    default = pipe("a photo", generator=torch.Generator().manual_seed(0), output_type="np", **SIZE).images
    assert DEFAULT_SCHEDULER == "euler-a" and np.array_equal(default, images["euler-a"])
    assert np.abs(images["ddim"] - images["euler-a"]).max() > 1e-3
    assert np.abs(images["dpmpp-2m-karras"] - images["ddim"]).max() > 1e-3


def test_an_unknown_sampler_is_refused_with_the_names_listed():
    with pytest.raises(FaceStudioError, match="--scheduler 'euler_a'.*euler-a, dpmpp-2m-karras, ddim"):
        GenerationSettings("x", scheduler="euler_a").validate("cli")
    with pytest.raises(FaceStudioError, match="scheduler 'k'.*tcd"):
        GenerationSettings("x", scheduler="k").validate("api")


def test_the_command_line_refuses_an_unknown_sampler_before_loading(tmp_path):
    done = subprocess.run([sys.executable, "-m", "facestudio.cli", "generate", "--prompt", "x", "--base-model", "tiny",
                           "--scheduler", "bogus", "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "bogus" in done.stderr and "dpmpp-2m-karras" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_api_names_the_sampler_and_lists_the_choices():
    from pydantic import ValidationError

    from facestudio.server.schemas import GenerationRequest

    assert GenerationRequest(prompt="x", scheduler="unipc").scheduler == "unipc"
    with pytest.raises(ValidationError, match="dpmpp-2m-karras"):
        GenerationRequest(prompt="x", scheduler="bogus")
