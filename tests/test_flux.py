"""FaceStudioFluxPipeline and PuLID-FLUX on a tiny FLUX.1 built in code: invariances against stock FluxPipeline,
region isolation at the transformer level, the checkpoint layout check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from facestudio.errors import FaceStudioError, ModelFileError
from facestudio.guidance.kinds.pulid_flux import PuLIDFluxConfig, pulid_identity
from facestudio.guidance.pulid_flux import IDENTITY_KEY, FluxIdentityCall
from facestudio.models import load_base_pipeline
from facestudio.models_flux import tiny_flux_components
from facestudio.pipeline_flux import FaceStudioFluxPipeline
from facestudio.request import GenerationSettings, IdentityInput

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The tiny cross-attention; the ID tokens keep PuLID's real width (2048).
TINY_PULID = PuLIDFluxConfig(heads=2, head_dim=16)
H, W = 64, 96  # 4 x 6 image tokens: not square, so a row/column mix-up shows
LEFT, RIGHT = (0, 0, 48, 64), (48, 0, 96, 64)


def seed(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def pulid_state(pipe, weights_seed: int = 1) -> dict[str, torch.Tensor]:
    """Random PuLID-FLUX weights in the published flat layout (`pulid_ca.N.*` plus an IDFormer key), norms too."""
    modules = TINY_PULID.modules_for(pipe.transformer)
    generator = seed(weights_seed)
    state = {k: torch.randn(v.shape, generator=generator) * (0.2 if v.ndim > 1 else 0.5) + (v.ndim == 1) * 1.0
             for k, v in modules.state_dict().items()}
    return {**state, "pulid_encoder.proj.0.weight": torch.zeros(4, 4)}


def id_tokens(s: int) -> np.ndarray:
    return torch.randn(32, 2048, generator=seed(100 + s)).numpy()


@pytest.fixture(scope="module")
def stock():
    return FluxPipeline(**tiny_flux_components())


@pytest.fixture(scope="module")
def pipe():
    pipe = load_base_pipeline("tiny", FaceStudioFluxPipeline, device="cpu")
    pipe.load_pulid_flux(pulid_state(pipe), TINY_PULID)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def people(strengths=(1.0, 1.0), regions=(LEFT, RIGHT), tokens=(0, 1)):
    return [IdentityInput(identity=pulid_identity(id_tokens(t), f"p{t}"), region=r, strength=s)
            for s, r, t in zip(strengths, regions, tokens)]


def run(pipe, identities=(), **kwargs):
    kwargs = {"num_inference_steps": 3, "generator": seed(5), "height": H, "width": W, "output_type": "np", **kwargs}
    return pipe("two friends at the beach", identities=list(identities), **kwargs).images


def test_text_only_equals_stock_flux(pipe, stock):
    stock.set_progress_bar_config(disable=True)
    expected = stock("two friends at the beach", height=H, width=W, num_inference_steps=3, generator=seed(5),
                     output_type="np").images
    assert np.abs(run(pipe) - expected).max() == 0.0  # PuLID loaded, no identity: the stock model exactly
    plain = load_base_pipeline("tiny", FaceStudioFluxPipeline, device="cpu")
    assert np.abs(run(plain) - expected).max() == 0.0


def test_strength_zero_equals_stock_and_strength_acts(pipe, stock):
    expected = stock("two friends at the beach", height=H, width=W, num_inference_steps=3, generator=seed(5),
                     output_type="np").images
    assert np.abs(run(pipe, people((0.0, 0.0))) - expected).max() == 0.0
    assert np.abs(run(pipe, people((1.0, 1.0))) - expected).max() > 1e-3
    # a start step past the last step: no identity acts at all
    assert np.abs(run(pipe, people(), start_step=3) - expected).max() == 0.0
    assert np.abs(run(pipe, people(), start_step=2) - expected).max() > 0.0


def test_true_cfg_matches_stock_true_cfg(pipe, stock):
    expected = stock("two friends at the beach", negative_prompt="blurry", true_cfg_scale=3.0, height=H, width=W,
                     num_inference_steps=3, generator=seed(5), output_type="np").images
    ours = run(pipe, negative_prompt="blurry", text_guidance_scale=3.0)  # both rows in one batch
    assert np.abs(ours - expected).max() < 1e-5


def test_batch_equals_singles(pipe):
    # to float32 rounding: a batch of 2 and one of 1 take different matmul kernels (1.01e-5 apart on an AMD
    # EPYC, under 1e-5 where this test was written)
    batch = run(pipe, people(), num_images_per_prompt=2, generator=[seed(5), seed(6)])
    assert np.abs(batch[0] - run(pipe, people(), generator=seed(5))[0]).max() < 1e-4
    assert np.abs(batch[1] - run(pipe, people(), generator=seed(6))[0]).max() < 1e-4


def _transformer_inputs(pipe, batch: int = 1):
    g = seed(9)
    latents = torch.randn(batch, 24, 64, generator=g)
    text = torch.randn(batch, 7, 32, generator=g)
    ids = FluxPipeline._prepare_latent_image_ids(batch, 4, 6, "cpu", torch.float32)
    pooled = torch.randn(batch, 32, generator=g)
    return dict(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled,
                timestep=torch.full((batch,), 0.7), guidance=torch.full((batch,), 3.5), img_ids=ids,
                txt_ids=torch.zeros(7, 3), return_dict=False)


def _keep(entry: dict, key: str):
    def hook(module, args, output):
        entry[key] = output[1].clone()  # returns None: the output goes on unchanged
    return hook


def _record_sites(pipe, call):
    """Run the transformer once with `call`; each insertion point's (block output, output with identities)."""
    transformer, records, handles = pipe.transformer, [], []
    for blocks, i in transformer.pulid_flux.points():
        block = getattr(transformer, blocks)[i]
        entry = {}
        records.append(entry)
        handles.append(block.register_forward_hook(_keep(entry, "before"), prepend=True))
        handles.append(block.register_forward_hook(_keep(entry, "after")))
    try:
        with torch.no_grad():
            transformer(**_transformer_inputs(pipe), joint_attention_kwargs={IDENTITY_KEY: call})
    finally:
        for h in handles:
            h.remove()
    return records


def test_region_isolation_two_identities_at_the_transformer(pipe):
    kind = pipe._adapter("identity").adapter_kind
    masks = np.zeros((2, H, W), np.float32)
    masks[0, :, :24], masks[1, :, 72:] = 1.0, 1.0  # A left, B right, token columns 2, 3 between; 1 and 4 partly
    gates = pipe.token_gates(masks, (1.0, 0.8), H, W)
    b_zero = (gates[1] == 0).reshape(-1)
    outside = (gates.sum(0) == 0).reshape(-1)
    tokens = lambda t: kind.tokens(None, pulid_identity(id_tokens(t)))[None]  # noqa: E731
    both = _record_sites(pipe, FluxIdentityCall((tokens(0), tokens(1)), gates))
    assert len(both) == 4  # after double blocks 0, 2 and single blocks 0, 4
    for site in both:  # what every site adds: nothing outside both regions
        added = (site["after"] - site["before"])[0]
        assert added[outside].abs().max() == 0.0 and added[~outside].abs().max() > 0.0
    b_only = _record_sites(pipe, FluxIdentityCall((tokens(0), tokens(1)), gates * torch.tensor([[0.0], [1.0]])))
    for site in b_only:  # person B alone: nothing where B's mask is 0
        added = (site["after"] - site["before"])[0]
        assert added[b_zero].abs().max() == 0.0 and added[~b_zero].abs().max() > 0.0
    # another person B: the first site's image tokens change only inside B's region, exactly
    other = _record_sites(pipe, FluxIdentityCall((tokens(0), tokens(7)), gates))
    change = (other[0]["after"] - both[0]["after"])[0].abs().amax(-1)
    assert change[b_zero].max() == 0.0 and change[~b_zero].min() > 0.0


def test_regions_in_the_pipeline_gate_each_person(pipe):
    masks = np.zeros((2, H, W), np.float32)
    masks[0, :, :48], masks[1, :, 48:] = 1.0, 1.0
    gates = pipe.token_gates(masks, (1.0, 0.5), H, W)
    assert gates.shape == (2, 24)
    grid = gates.reshape(2, 4, 6)  # row-major over the 4 x 6 token grid, as FluxPipeline packs latents
    assert torch.equal(grid[0, :, :3], torch.ones(4, 3)) and torch.equal(grid[0, :, 3:], torch.zeros(4, 3))
    assert torch.equal(grid[1, :, 3:], torch.full((4, 3), 0.5)) and torch.equal(grid[1, :, :3], torch.zeros(4, 3))
    # strength per person: person B at 0 is B absent
    alone = run(pipe, people((1.0,), (LEFT,)))
    assert np.abs(run(pipe, people((1.0, 0.0))) - alone).max() == 0.0


def test_checkpoint_layout_checked_key_by_key(pipe, tmp_path):
    from safetensors.torch import save_file

    state = pulid_state(pipe)
    fresh = load_base_pipeline("tiny", FaceStudioFluxPipeline, device="cpu")
    wrong = {**state, "pulid_ca.1.to_kv.weight": torch.zeros(64, 1024)}
    with pytest.raises(ModelFileError, match=r"pulid_ca.1.to_kv.weight has shape \[64, 1024\], expected \[64, 2048\]"):
        fresh.load_pulid_flux(wrong, TINY_PULID)
    missing = {k: v for k, v in state.items() if k != "pulid_ca.3.to_out.weight"}
    with pytest.raises(ModelFileError, match=r"pulid_ca.3.to_out.weight \[32, 32\] is missing"):
        fresh.load_pulid_flux(missing, TINY_PULID)
    with pytest.raises(ModelFileError, match="unexpected key pulid_ca.4.norm1.weight"):
        fresh.load_pulid_flux({**state, "pulid_ca.4.norm1.weight": torch.ones(2048)}, TINY_PULID)
    with pytest.raises(ModelFileError, match="pulid_ca.0.to_q.weight has shape"):  # the published sizes don't fit
        fresh.load_pulid_flux(state)
    assert not hasattr(fresh.transformer, "pulid_flux")  # nothing installed by a refused load
    path = tmp_path / "pulid_flux_v0.9.1.safetensors"
    save_file(state, str(path))
    fresh.load_pulid_flux(path, TINY_PULID)
    loaded = fresh.transformer.pulid_flux.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded) and len(loaded) == 4 * 7
    fresh.unload_adapters()
    assert not hasattr(fresh.transformer, "pulid_flux")


def test_flux_refuses_what_it_does_not_take(pipe):
    with pytest.raises(FaceStudioError, match="multiples of 16"):
        run(pipe, height=72)
    with pytest.raises(FaceStudioError, match="start_step -1"):
        run(pipe, start_step=-1)
    with pytest.raises(FaceStudioError, match="PuLID-FLUX is not loaded"):
        run(load_base_pipeline("tiny", FaceStudioFluxPipeline, device="cpu"), people())
    with pytest.raises(FaceStudioError, match="style image is not supported on FLUX"):
        pipe(GenerationSettings("x", style_image="style.png", width=64, height=64))
    with pytest.raises(FaceStudioError, match="not IP-Adapters"):
        pipe.load_adapters(identity="x")
    photo = IdentityInput(photos=(np.zeros((64, 64, 3), np.uint8),))
    with pytest.raises(FaceStudioError, match="PuLID's ID encoder"):
        run(pipe, [photo])


def test_int8_transformer_close_to_float_and_offload_skipped_without_cuda(caplog):
    pytest.importorskip("optimum.quanto")
    import logging

    from facestudio.models_flux import enable_flux_memory_modes

    plain = load_base_pipeline("tiny", FaceStudioFluxPipeline, device="cpu")
    plain.load_pulid_flux(pulid_state(plain), TINY_PULID)
    plain.set_progress_bar_config(disable=True)
    expected = run(plain, people())
    with caplog.at_level(logging.INFO, logger="facestudio"):
        enable_flux_memory_modes(plain, quantize="int8", cpu_offload=True, device="cpu")
    assert "CPU offload skipped" in caplog.text or torch.cuda.is_available()
    assert type(plain.transformer.transformer_blocks[0].attn.to_q).__name__ == "QLinear"
    assert type(plain.transformer.pulid_flux.pulid_ca[0].to_q) is torch.nn.Linear  # PuLID's kept as they are
    quantised = run(plain, people())
    assert 0 < np.abs(quantised - expected).max() < 0.05
    with pytest.raises(FaceStudioError, match="choose one of"):
        enable_flux_memory_modes(plain, cpu_offload=True, sequential_offload=True)


@pytest.fixture(scope="module")
def encoder_pipe(tmp_path_factory):
    """The tiny pipeline with PuLID's ID encoder at tiny widths (64-wide ID tokens) and a tiny antelopev2."""
    pytest.importorskip("onnxscript")
    from test_arcface import _export, _tiny_arcface

    from facestudio.guidance.pulid.antelope import AntelopeRecognizer
    from facestudio.guidance.pulid.encoder import tiny_pulid_encoder

    onnx = _export(_tiny_arcface(0), tmp_path_factory.mktemp("antelopev2") / "glintr100.onnx")
    encoder = tiny_pulid_encoder("flux-v0.9.1", seed=0, recognizer=AntelopeRecognizer(onnx))
    config = PuLIDFluxConfig(id_dim=64, heads=2, head_dim=16)
    pipe = load_base_pipeline("tiny", FaceStudioFluxPipeline, device="cpu")
    modules = config.modules_for(pipe.transformer)
    generator = seed(2)
    state = {k: torch.randn(v.shape, generator=generator) * 0.3 + (v.ndim == 1)
             for k, v in modules.state_dict().items()}
    pipe.load_pulid_flux(state, config, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe, encoder


def test_photos_through_pulids_encoder_two_people_true_cfg_and_mix(encoder_pipe, photos, stock):
    from facestudio.faces.analysis import select_face

    pipe, encoder = encoder_pipe
    obama, biden = photos["obama.jpg"], photos["biden.jpg"]
    face = select_face(pipe.get_face_analyzer().detect(obama))
    identity = pipe.encode_photos([obama], [face], "obama")
    assert np.array_equal(identity.detail, encoder.encode([obama], [face]).cond[0].numpy())
    assert np.array_equal(pipe._adapter("identity").null_identity.detail, encoder.null_tokens()[0].numpy())
    two = [IdentityInput(photos=(obama,), region=LEFT), IdentityInput(photos=(biden,), region=RIGHT)]
    expected = stock("two friends at the beach", height=H, width=W, num_inference_steps=3, generator=seed(5),
                     output_type="np").images
    out = pipe("two friends at the beach", identities=two, num_inference_steps=3, generator=seed(5), height=H,
               width=W, output_type="np")
    assert out.settings["identities"] == ["identity 1", "identity 2"]
    assert np.abs(out.images - expected).max() > 1e-3
    # true CFG with "no identity" (the encoder's uncond) in the negative row, and three-way guidance
    for scales in ({"text_guidance_scale": 2.0}, {"text_guidance_scale": 2.0, "reference_guidance_scale": 3.0}):
        images = pipe("two friends", negative_prompt="blurry", identities=two, num_inference_steps=2, height=H,
                      width=W, generator=seed(5), output_type="np", **scales).images
        assert np.isfinite(images).all()
    mixed = pipe("a portrait", identities=two[:1] + [IdentityInput(photos=(biden,))], mix=(0.5, 0.5),
                 num_inference_steps=2, height=H, width=W, generator=seed(5), output_type="np")
    assert mixed.settings["identities"] == ["mix of identity 1, identity 2"]


def test_a_face_put_into_a_scene_keeps_the_scene_outside_it(pipe, faces_dir):
    from PIL import Image

    from facestudio.faces.regions import dilated_face_mask
    from facestudio.regions.scene import FACE_GROWTH

    scene = Image.open(faces_dir / "obama.jpg").convert("RGB")
    out = pipe("a portrait", identities=people((1.0,), (None,)), scene_image=scene, num_inference_steps=2,
               generator=seed(5), output_type="np")
    image = out.images[0]
    height, width = image.shape[:2]
    assert max(height, width) == 1024 and height % 16 == 0 and width % 16 == 0  # the scene's shape, FLUX's side
    assert out.settings["scene_image"] is True
    resized = np.asarray(scene.resize((width, height), Image.LANCZOS)).astype(np.float32) / 255.0
    face = pipe.get_face_analyzer().detect((resized * 255).astype(np.uint8))[0]
    kept = ~dilated_face_mask(face, width, height, FACE_GROWTH).astype(bool)
    assert np.abs(image[kept] - resized[kept]).max() < 1 / 255 + 1e-6  # the scene's own pixels, exactly
    assert np.abs(image[~kept] - resized[~kept]).max() > 0.05  # and the face regenerated
