"""Guidance that costs only the rows it uses: the real tiny UNet's calls counted, the pruned prediction equal to
the full three-row one wherever the two are mathematically equal."""

import pytest
import torch

from conftest import tiny_facestudio_pipeline
from facestudio.guidance.cfg import CONDITIONS, UNCOND_REF, GuidancePlan, GuidanceRows
from facestudio.pipeline import IdentityInput
from facestudio.request import GenerationSettings
from facestudio.sampling.schedulers import make_scheduler

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def pipe():
    return tiny_facestudio_pipeline()


@pytest.fixture(scope="module")
def person(faces_dir, pipe):
    return pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",), name="obama")], None)[0]


def unet_batches(pipe, **call) -> list[int]:
    """The batch of every real UNet forward of one call (a hook on the UNet, not a stand-in)."""
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        pipe("a portrait photo", generator=torch.Generator().manual_seed(0), output_type="latent", **SIZE, **call)
    finally:
        hook.remove()
    return batches


@pytest.mark.parametrize("scales, rows", [
    ((7.5, None), 2),   # reference scale = text scale: (uncond, full)
    ((7.5, 2.0), 3),    # separate scales: three-way
    ((1.0, 3.0), 2),    # text scale 1: no unconditional row
    ((5.0, 0.0), 2),    # reference scale 0: no full row
    ((1.0, 1.0), 1),    # no guidance: one row
])
def test_each_step_runs_only_the_rows_the_scales_need(pipe, person, scales, rows):
    batches = unet_batches(pipe, identities=[IdentityInput(identity=person)], text_guidance_scale=scales[0],
                           reference_guidance_scale=scales[1], num_inference_steps=3)
    assert batches == [rows] * 3


def test_four_steps_at_scale_one_cost_four_unet_evaluations(pipe, person):
    batches = unet_batches(pipe, identities=[IdentityInput(identity=person)], text_guidance_scale=1.0,
                           num_inference_steps=4)
    assert sum(batches) == 4 and len(batches) == 4


def test_without_a_reference_two_rows_or_one(pipe):
    assert unet_batches(pipe, num_inference_steps=2) == [2, 2]
    assert unet_batches(pipe, num_inference_steps=2, text_guidance_scale=1.0) == [1, 1]


def test_reference_guidance_starts_below_the_timestep(pipe, person):
    scheduler = make_scheduler("euler-a", pipe.scheduler)
    scheduler.set_timesteps(6)
    start = 600
    early = sum(float(t) > start for t in scheduler.timesteps)
    assert 0 < early < 6
    batches = unet_batches(pipe, identities=[IdentityInput(identity=person)], reference_guidance_scale=2.0,
                           num_inference_steps=6, reference_guidance_start=start)
    assert batches == [2] * early + [3] * (6 - early)
    plan = GuidancePlan.for_call(True, 7.5, 2.0, start)
    assert plan.stacked.conditions == (*CONDITIONS, UNCOND_REF) and plan.at(999).conditions == (UNCOND_REF, "full")


def one_step(pipe, person, rows: GuidanceRows, text_scale: float, reference_scale: float) -> torch.Tensor:
    """One denoising step (deterministic Euler) through the pipeline's own inputs for `rows`."""
    settings = GenerationSettings("a portrait photo", text_guidance_scale=text_scale,
                                  reference_guidance_scale=reference_scale)
    text, added = pipe.encode_text(["a portrait photo"], None, pipe.device, 1, rows, 64, 64)
    tokens = [pipe.identity_tokens([person], 1, rows)]
    masks = pipe.region_masks(torch.ones(1, 64, 64).numpy(), 64, 64)
    from facestudio.attention import LayerMasks, RegionMasks

    kwargs = {"added_cond_kwargs": {**added, "image_embeds": tokens},
              "cross_attention_kwargs": {"ip_adapter_masks": LayerMasks((RegionMasks(masks, (1.0,)),), (8, 8))}}
    scheduler = make_scheduler("euler", pipe.scheduler)
    scheduler.set_timesteps(4)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    with torch.no_grad():
        return pipe.denoise_step(scheduler, scheduler.timesteps[0], latents, rows, text, kwargs, settings)


@pytest.mark.parametrize("text_scale, reference_scale", [(7.5, 7.5), (1.0, 3.0), (5.0, 0.0), (1.0, 1.0),
                                                         (1.0, 0.0), (7.5, 2.0)])
def test_the_pruned_rows_give_the_three_row_prediction(pipe, person, text_scale, reference_scale):
    pruned = GuidanceRows.for_scales(True, text_scale, reference_scale)
    full = one_step(pipe, person, GuidanceRows(CONDITIONS), text_scale, reference_scale)
    assert (torch.abs(one_step(pipe, person, pruned, text_scale, reference_scale) - full).max()) <= 1e-5
    # and the scales matter: the check compares predictions that differ between settings
    other = one_step(pipe, person, GuidanceRows(CONDITIONS), text_scale + 2.0, reference_scale)
    assert torch.abs(other - full).max() > 1e-4


def test_the_plan_takes_each_steps_rows_from_the_stacked_inputs():
    stacked = GuidanceRows((*CONDITIONS, UNCOND_REF))
    tensor = torch.arange(8.0).view(8, 1)  # batch 2 per row
    assert stacked.take(tensor, GuidanceRows((UNCOND_REF, "full"))).flatten().tolist() == [6, 7, 4, 5]
    assert stacked.text(torch.zeros(1), torch.ones(1)).tolist() == [0, 1, 1, 0]
    assert [float(r) for r in stacked.references(torch.tensor(0.0), torch.tensor(1.0))] == [0, 0, 1, 1]
