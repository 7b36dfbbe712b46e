"""PuLID on SDXL: the ID attention against the reference, its checkpoint layout, regions, and the pipeline's
invariances, on a tiny SDXL-shaped UNet with the real widths (2048-wide text and ID tokens) built in code.

ID tokens are random tensors of the real width here: they stand in for the ID encoder (EVA02-CLIP + IDFormer),
which has its own tests; what is tested is everything from the tokens on.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

sys.path.insert(0, str(Path(__file__).parent / "support"))
from test_pipeline import check_batch_equals_singles, check_threads_match_alone  # noqa: E402
from pulid_tiny import random_id_tokens, random_pulid_checkpoint, tiny_pulid_components  # noqa: E402
from pulid_unet_reference import reference_source  # noqa: E402

from facestudio.attention import LayerMasks, RegionMasks  # noqa: E402
from facestudio.errors import FaceStudioError, ModelFileError  # noqa: E402
from facestudio.guidance.kinds.pulid import PuLIDConfig, identity_from_tokens, split_checkpoint  # noqa: E402
from facestudio.guidance.pulid.attention import PuLIDAttnProcessor, orthogonal_part  # noqa: E402
from facestudio.pipeline import IdentityInput  # noqa: E402
from facestudio.pipeline_xl import FaceStudioXLPipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = dict(height=64, width=64, num_inference_steps=2, text_guidance_scale=3.0)
LEFT, RIGHT = (0, 0, 32, 64), (32, 0, 64, 64)


def seed(n=0):
    return torch.Generator().manual_seed(n)


def new_pipe(config=None, checkpoint_seed=1):
    config = config or PuLIDConfig(sizes="tiny")
    pipe = FaceStudioXLPipeline(**tiny_pulid_components())
    pipe.set_progress_bar_config(disable=True)
    flat = random_pulid_checkpoint(pipe.unet, seed=checkpoint_seed, version=config.version)
    pipe.load_adapters(identity=split_checkpoint(flat, "random"), identity_config=config)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return new_pipe()


@pytest.fixture(scope="module")
def people(pipe):
    tokens = random_id_tokens(2, seed=2) * 2
    signature = pipe.identity_signature()
    return identity_from_tokens(tokens[0], signature, "a"), identity_from_tokens(tokens[1], signature, "b")


def run(pipe, *identities, **kw):
    args = {**SIZE, "generator": seed(kw.pop("seed", 0)), "output_type": "np", **kw}
    return pipe("a portrait photo", identities=list(identities), **args).images


# --- the oracle ------------------------------------------------------------------------------------------


@pytest.mark.skipif(reference_source()[0] is None, reason=f"PuLID reference absent: {reference_source()[1]}")
@pytest.mark.parametrize("mode", ["fidelity", "extremely-style", "neutral"])
@pytest.mark.parametrize("version", ["v1", "v1.1"])
def test_unet_step_equals_the_reference_attention(version, mode):
    """One UNet step with the reference's IDAttnProcessor2_0 (same random weights in the published layout, same
    latents, text and ID tokens, the mode's NUM_ZERO / ORTHO globals) equals facestudio's."""
    from pulid_unet_reference import compare

    result = compare(version, mode, id_scale=0.8)
    assert result["id_effect"] > 0.05  # the ID attention moves the output: an equality cannot be vacuous
    assert result["max_diff"] <= 1e-4, result


# --- the attention maths on one layer ------------------------------------------------------------------

H = W = 8
DIM, CROSS, HEADS = 32, 2048, 4


@pytest.fixture()
def layer():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=DIM, cross_attention_dim=CROSS, heads=HEADS, dim_head=DIM // HEADS)
    hidden, text = torch.randn(2, H * W, DIM), torch.randn(2, 7, CROSS)
    ids = torch.randn(2, 2, 18, CROSS)  # two people, v1's 10 tokens + 8 zeros' worth
    return attn, hidden, text, ids


def _processor(attn, ortho):
    proc = PuLIDAttnProcessor(DIM, CROSS, ortho)
    torch.manual_seed(1)
    for p in proc.parameters():
        torch.nn.init.normal_(p, std=0.05)
    attn.set_processor(proc)
    return proc


def _halves(strengths=(1.0, 1.0)):
    masks = torch.zeros(2, H, W)
    masks[0, :, : W // 2] = 1
    masks[1, :, W // 2:] = 1
    return LayerMasks((RegionMasks(masks, strengths),), (H, W))


@pytest.mark.parametrize("ortho", ["off", "v1", "v2"])
def test_changing_one_person_changes_nothing_outside_their_region(layer, ortho):
    attn, hidden, text, ids = layer
    _processor(attn, ortho)
    masks = _halves()
    before = attn(hidden, encoder_hidden_states=(text, [ids]), ip_adapter_masks=masks)
    changed = ids.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])
    after = attn(hidden, encoder_hidden_states=(text, [changed]), ip_adapter_masks=masks)
    outside = (masks.adapters[0].masks[1] == 0).reshape(-1)
    assert torch.equal(before[:, outside], after[:, outside])  # exactly
    assert (before[:, ~outside] - after[:, ~outside]).abs().max() > 1e-4


@pytest.mark.parametrize("ortho", ["off", "v1", "v2"])
def test_strength_zero_is_the_plain_attention(layer, ortho):
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn, hidden, text, ids = layer
    _processor(attn, ortho)
    off = attn(hidden, encoder_hidden_states=(text, [ids]), ip_adapter_masks=_halves((0.0, 0.0)))
    attn.set_processor(AttnProcessor2_0())
    assert torch.equal(off, attn(hidden, encoder_hidden_states=text))


def test_orthogonal_part_is_orthogonal_over_the_region():
    torch.manual_seed(0)
    text, identity = torch.randn(1, 16, 8), torch.randn(1, 16, 8)
    weight = torch.zeros(1, 16, 1)
    weight[:, :6] = 0.7
    part = orthogonal_part(text, identity, weight)
    assert torch.allclose((weight * part * text).sum(1), torch.zeros(1, 8), atol=1e-5)
    # a region where the text output is 0 has nothing to project onto: no NaN
    assert torch.isfinite(orthogonal_part(torch.zeros(1, 16, 8), identity, weight)).all()


def test_each_person_is_gated_at_every_layer_of_the_unet(pipe, people):
    """In every cross-attention layer of the UNet (every latent resolution), person B's ID attention adds exactly
    0.0 where B's mask is 0: the layer's output there is the same whoever B is."""
    captured = {}
    hooks = [proc_attn.register_forward_pre_hook(
        lambda module, args, kwargs, name=name: captured.setdefault(name, (args, kwargs)), with_kwargs=True)
        for name, proc_attn in ((n.removesuffix(".processor"), pipe.unet.get_submodule(n.removesuffix(".processor")))
                                for n, p in pipe.unet.attn_processors.items() if isinstance(p, PuLIDAttnProcessor))]
    kind, projection = pipe.facestudio_adapters[0].adapter_kind, pipe._projection(pipe.facestudio_adapters[0])
    tokens = torch.stack([kind.tokens(projection, p) for p in people])[None]  # [1, 2, T, D]
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :5], masks[1, :, 5:] = 1, 1  # not on a halving boundary: partly covered cells at 4x4 and 2x2
    layer_masks = LayerMasks((RegionMasks(masks, (1.0, 1.5)),), (8, 8))
    generator = seed(3)
    sample, text = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 2048, generator=generator)
    added = {"text_embeds": torch.randn(1, 1280, generator=generator), "time_ids": torch.tensor([[64.0] * 2 + [0.0] * 2 + [64.0] * 2])}
    try:
        with torch.no_grad():
            pipe.unet(sample, 500, text, added_cond_kwargs={**added, "image_embeds": [tokens]},
                      cross_attention_kwargs={"ip_adapter_masks": layer_masks})
    finally:
        [h.remove() for h in hooks]
    assert len(captured) == sum(isinstance(p, PuLIDAttnProcessor) for p in pipe.unet.attn_processors.values())
    other = tokens.clone()
    other[:, 1] = torch.randn_like(other[:, 1])
    sizes = set()
    for name, (args, kwargs) in captured.items():
        attn = pipe.unet.get_submodule(name)
        hidden = args[0] if args else kwargs["hidden_states"]
        text_in = kwargs["encoder_hidden_states"][0]
        with torch.no_grad():
            a = attn(hidden, encoder_hidden_states=(text_in, [tokens]), ip_adapter_masks=layer_masks)
            b = attn(hidden, encoder_hidden_states=(text_in, [other]), ip_adapter_masks=layer_masks)
        (mask,) = layer_masks.for_queries(hidden.shape[1], hidden.device, torch.float32)
        outside = mask[0, 1].reshape(-1) == 0
        sizes.add(hidden.shape[1])
        assert outside.any() and (~outside).any(), name
        assert torch.equal(a[:, outside], b[:, outside]), name
        assert (a[:, ~outside] - b[:, ~outside]).abs().max() > 0, name
    assert sizes == {16, 4}  # both attention resolutions of the tiny SDXL UNet (4x4 and the 2x2 mid block)


# --- checkpoint layout --------------------------------------------------------------------------------


def _loaded_state(**change):
    pipe = FaceStudioXLPipeline(**tiny_pulid_components())
    flat = random_pulid_checkpoint(pipe.unet)
    for key, value in change.items():
        key = key.replace("__", ".")
        if value is None:
            del flat[key]
        else:
            flat[key] = value
    return pipe, flat


@pytest.mark.parametrize("change, message", [
    ({"id_adapter_attn_layers__1__id_to_k__weight": None}, r"id_adapter_attn_layers\.1\.id_to_k\.weight \[32, 2048\] is missing"),
    ({"id_adapter_attn_layers__3__id_to_v__weight": torch.zeros(64, 768)},
     r"id_adapter_attn_layers\.3\.id_to_v\.weight has shape \[64, 768\], expected \[64, 2048\]"),
    ({"id_adapter_attn_layers__999__id_to_k__weight": torch.zeros(32, 2048)}, r"unexpected key id_adapter_attn_layers\.999"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(change, message):
    pipe, flat = _loaded_state(**change)
    with pytest.raises(ModelFileError, match=message):
        pipe.load_adapters(identity=split_checkpoint(flat, "x"), identity_config=PuLIDConfig(sizes="tiny"))
    assert pipe.facestudio_adapters == () and pipe.unet.encoder_hid_proj is None


def test_foreign_files_and_unets_are_refused():
    from facestudio.models import tiny_xl_components

    with pytest.raises(ModelFileError, match="unexpected key 'image_proj.latents'"):
        split_checkpoint({"image_proj.latents": torch.zeros(1)}, "ip-adapter.bin")
    small = FaceStudioXLPipeline(**tiny_xl_components())  # 64-wide cross-attention: not SDXL's
    flat = random_pulid_checkpoint(small.unet)
    with pytest.raises(ModelFileError, match="cross_attention_dim 2048; this UNet has 64"):
        small.load_adapters(identity=split_checkpoint(flat, "x"), identity_config=PuLIDConfig(sizes="tiny"))


@pytest.mark.parametrize("version, weight_name", [("v1", "pulid_v1.bin"), ("v1.1", "pulid_v1.1.safetensors")])
def test_published_files_load_and_unloading_restores_the_base_unet(tmp_path, version, weight_name):
    from safetensors.torch import save_file

    pipe = FaceStudioXLPipeline(**tiny_pulid_components())
    flat = random_pulid_checkpoint(pipe.unet, version=version)
    if weight_name.endswith(".bin"):
        torch.save(flat, tmp_path / weight_name)
    else:
        save_file(flat, tmp_path / weight_name)
    inputs = dict(sample=torch.randn(1, 4, 8, 8), timestep=10, encoder_hidden_states=torch.randn(1, 77, 2048),
                  added_cond_kwargs={"text_embeds": torch.zeros(1, 1280), "time_ids": torch.ones(1, 6)})
    with torch.no_grad():
        before = pipe.unet(**inputs).sample
        pipe.load_public_adapters((str(tmp_path), weight_name, None), identity_config=PuLIDConfig(version=version,
                                                                                                  sizes="tiny"))
        procs = [p for p in pipe.unet.attn_processors.values() if isinstance(p, PuLIDAttnProcessor)]
        assert 2 * len(procs) == sum(k.startswith("id_adapter_attn_layers.") for k in flat) == 22
        assert torch.equal(procs[0].id_to_k.weight, flat["id_adapter_attn_layers.1.id_to_k.weight"])
        pipe.unload_adapters()
        after = pipe.unet(**inputs).sample
    assert torch.equal(before, after)


def test_modes_and_bad_settings():
    assert (PuLIDConfig().effective_num_zero, PuLIDConfig().effective_ortho) == (8, "v2")
    assert (PuLIDConfig(version="v1.1").effective_num_zero, PuLIDConfig(mode="style").effective_ortho) == (20, "v1")
    assert PuLIDConfig(mode="neutral", num_zero=4, ortho="v1").effective_num_zero == 4
    for bad, message in [(dict(version="v2"), "unknown PuLID version"), (dict(mode="wild"), "unknown PuLID mode"),
                         (dict(ortho="v3"), "ortho must be one of"), (dict(num_zero=-1), "num_zero")]:
        with pytest.raises((FaceStudioError, ModelFileError), match=message):
            PuLIDConfig(**bad)


# --- the pipeline's invariances -------------------------------------------------------------------------


def test_strength_zero_is_the_base_pipeline_and_strength_matters(pipe, people):
    base = StableDiffusionXLPipeline(**tiny_pulid_components())
    base.set_progress_bar_config(disable=True)
    expected = base("a portrait photo", guidance_scale=SIZE["text_guidance_scale"], generator=seed(),
                    output_type="np", **{k: SIZE[k] for k in ("height", "width", "num_inference_steps")}).images
    off = run(pipe, IdentityInput(identity=people[0], strength=0.0))
    assert np.abs(off - expected).max() < 1e-4
    on = run(pipe, IdentityInput(identity=people[0], strength=1.0))
    assert np.abs(on - expected).max() > 1e-3


def test_batch_equals_singles(pipe, people):
    check_batch_equals_singles(pipe, IdentityInput(identity=people[0]), run)


def test_two_threads_with_different_settings_match_running_alone(pipe, people):
    a, b = people
    check_threads_match_alone(pipe, run, {
        "a": dict(identities=[IdentityInput(identity=a, strength=1.5)], reference_guidance_scale=5.0, seed=1),
        "ab": dict(identities=[IdentityInput(identity=a, region=LEFT),
                               IdentityInput(identity=b, region=RIGHT, strength=0.5)], seed=2),
    })


def test_regions_mixing_and_several_photos(pipe, people):
    a, b = people
    left_right = run(pipe, IdentityInput(identity=a, region=LEFT), IdentityInput(identity=b, region=RIGHT))
    auto = run(pipe, IdentityInput(identity=a), IdentityInput(identity=b))  # regions "auto": the same halves
    assert np.abs(left_right - auto).max() < 1e-5
    swapped = run(pipe, IdentityInput(identity=b, region=LEFT), IdentityInput(identity=a, region=RIGHT))
    assert np.abs(left_right - swapped).max() > 1e-3
    alone = run(pipe, IdentityInput(identity=a))
    mixed = run(pipe, IdentityInput(identity=a), IdentityInput(identity=b), mix=[1.0, 0.0])
    assert np.abs(mixed - alone).max() < 1e-5
    assert np.abs(run(pipe, IdentityInput(identity=a), IdentityInput(identity=b), mix=[0.5, 0.5]) - alone).max() > 1e-3
    # two photos of one person: their tokens averaged token by token
    kind = pipe.facestudio_adapters[0].adapter_kind
    two = identity_from_tokens(np.stack([a.detail, a.detail * 3]), kind.signature, "a twice")
    once = identity_from_tokens(a.detail * 2, kind.signature, "a")
    assert np.abs(run(pipe, IdentityInput(identity=two)) - run(pipe, IdentityInput(identity=once))).max() < 1e-5


def test_identities_of_another_version_and_tokens_of_another_shape_are_refused(pipe, people):
    other = identity_from_tokens(random_id_tokens(1, tokens=32)[0], "pulid-v1.1", "a")
    with pytest.raises(ValueError, match="encoded for 'pulid-v1.1'"):
        run(pipe, IdentityInput(identity=other))
    with pytest.raises(ValueError, match=r"PuLID v1 ID tokens must be \[n, 10, D\], got \[1, 32, 2048\]"):
        identity_from_tokens(random_id_tokens(1, tokens=32)[0], "pulid-v1")


def test_text_and_reference_scales_and_the_no_identity_rows(pipe, people):
    """Three-way guidance: with the reference scale 0 who the person is does not matter."""
    a, b = people
    with_a = run(pipe, IdentityInput(identity=a, strength=2.0), reference_guidance_scale=0.0)
    with_b = run(pipe, IdentityInput(identity=b, strength=2.0), reference_guidance_scale=0.0)
    assert np.abs(with_a - with_b).max() < 1e-5
    assert np.abs(run(pipe, IdentityInput(identity=a, strength=2.0)) - with_a).max() > 1e-3


def test_modes_change_the_image(people):
    images = {}
    for mode in ("fidelity", "extremely-style", "neutral"):
        p = new_pipe(PuLIDConfig(mode=mode, sizes="tiny"))
        images[mode] = run(p, IdentityInput(identity=identity_from_tokens(people[0].detail, p.identity_signature())))
    assert np.abs(images["fidelity"] - images["neutral"]).max() > 1e-4
    assert np.abs(images["extremely-style"] - images["neutral"]).max() > 1e-4


# --- region sources and the face put into a scene ------------------------------------------------------


@pytest.fixture(scope="module")
def pair(faces_dir):
    """Two people side by side, faces of like size: Obama (left), Biden (right)."""
    from PIL import Image

    biden = np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))[:1200, 260:886]
    return Image.fromarray(np.concatenate([np.asarray(Image.open(faces_dir / "obama2.jpg").convert("RGB")), biden], 1))


def test_two_faces_put_into_a_scene_keep_everything_outside_the_faces(pipe, people, pair):
    from PIL import Image

    from facestudio.regions.scene import dilated_face

    two = [IdentityInput(identity=people[0]), IdentityInput(identity=people[1])]
    out = pipe("two people", identities=two, scene_image=pair, height=128, width=128, num_inference_steps=2,
               generator=seed(), output_type="np")
    image = np.round(out.images[0] * 255).astype(np.uint8)
    original = np.asarray(pair.resize((128, 128), Image.LANCZOS))  # as the pipeline fits a scene
    faces = pipe.face_analyzer.detect(original)
    assert len(faces) == 2
    outside = np.all([dilated_face(f, 128, 128) == 0 for f in faces], axis=0)
    assert 0.3 < outside.mean() < 0.95
    assert np.array_equal(image[outside], original[outside])
    assert np.abs(image[~outside].astype(int) - original[~outside]).mean() > 2  # the faces were regenerated


def test_every_region_source_reaches_the_id_attention(pipe, people, pair):
    """Boxes, masks, the automatic split, and a scene's faces each give the per-person masks the ID attention is
    gated by (`place_people`, the same stage as for the IP-Adapter kinds)."""
    a, b = people
    mask = np.zeros((64, 64), np.float32)
    mask[:, :32] = 1
    boxes = run(pipe, IdentityInput(identity=a, region=LEFT), IdentityInput(identity=b, region=RIGHT))
    masks = run(pipe, IdentityInput(identity=a, region=mask), IdentityInput(identity=b, region=1 - mask))
    split = run(pipe, IdentityInput(identity=a), IdentityInput(identity=b), regions="split")
    assert np.abs(boxes - masks).max() < 1e-5 and np.abs(boxes - split).max() < 1e-5
    narrow = run(pipe, IdentityInput(identity=a, region=(0, 0, 16, 64)), IdentityInput(identity=b, region=RIGHT))
    assert np.abs(boxes - narrow).max() > 1e-3
    scene_faces, _ = pipe.place_people([IdentityInput(identity=a), IdentityInput(identity=b)], 2, 128, 128, None,
                                       None, pair, None)
    assert scene_faces.shape == (2, 128, 128) and not np.any((scene_faces[0] > 0) & (scene_faces[1] > 0))


# --- photos through the ID encoder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded_pipe(tmp_path_factory):
    """A v1.1 PuLID pipeline whose ID encoder (tiny widths) is made from files in the published layouts."""
    pytest.importorskip("onnxscript", reason="the tiny antelopev2 ONNX file is exported with onnxscript")
    from pulid_tiny import tiny_pulid_files

    files = tiny_pulid_files(tmp_path_factory.mktemp("pulid-files"), "v1.1")
    return new_pipe(PuLIDConfig(version="v1.1", sizes="tiny", **files))


def test_photos_become_id_tokens_and_no_identity_is_the_encoder_on_zeros(encoded_pipe, faces_dir):
    kind = encoded_pipe.facestudio_adapters[0].adapter_kind
    null = encoded_pipe.facestudio_adapters[0].null_identity
    torch.testing.assert_close(torch.from_numpy(null.detail), kind.encoder.null_tokens(1)[0], rtol=0, atol=0)
    assert np.abs(null.detail).max() > 0  # the trained "no identity" input, not zeros
    one, both = encoded_pipe.encode_identities(
        [IdentityInput(photos=(faces_dir / "obama.jpg",), name="obama"),
         IdentityInput(photos=(faces_dir / "obama.jpg", faces_dir / "obama2.jpg"), name="obama twice")], None)
    assert one.detail.shape == both.detail.shape == (32, 2048)  # the ID former pools the photos
    assert np.abs(one.detail - both.detail).max() > 1e-4
    obama, biden = encoded_pipe.encode_identities(
        [IdentityInput(photos=(faces_dir / "obama.jpg",)), IdentityInput(photos=(faces_dir / "biden.jpg",))], None)
    image = run(encoded_pipe, IdentityInput(identity=obama, region=LEFT), IdentityInput(identity=biden, region=RIGHT))
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    with pytest.raises(FaceStudioError, match="PuLID reads 1 to 4 photos of a person, got 5"):
        encoded_pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",) * 5)], None)
