"""FaceStudioPipeline on tiny models built in code: invariances that must hold whatever the weights."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from conftest import run_in_threads, tiny_facestudio_pipeline
from facestudio.errors import FaceStudioError, ModelFileError, NoFaceError
from facestudio.guidance import identity as idg
from facestudio.guidance.layout import CONFIG_NAME, WEIGHTS_NAME
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput

SIZE = dict(height=64, width=64, num_inference_steps=3)


new_pipe = tiny_facestudio_pipeline


def seed(n=0):
    return torch.Generator().manual_seed(n)


@pytest.fixture(scope="module")
def pipe():
    return new_pipe()


@pytest.fixture(scope="module")
def people(faces_dir, pipe):
    """Obama and Biden encoded once for the module."""
    a, b = pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",), name="obama"),
                                   IdentityInput(photos=(faces_dir / "biden.jpg",), name="biden")], None)
    return a, b


def run(pipe, *identities, **kw):
    args = {**SIZE, "generator": seed(kw.pop("seed", 0)), "output_type": "np", **kw}
    return pipe("a portrait photo", identities=list(identities), **args).images


def test_strength_zero_is_the_base_pipeline_and_strength_matters(pipe, people):
    base = StableDiffusionPipeline(**{k: v for k, v in tiny_components().items() if k != "image_encoder"})
    base.set_progress_bar_config(disable=True)
    expected = base("a portrait photo", guidance_scale=7.5, generator=seed(), output_type="np", **SIZE).images
    off = run(pipe, IdentityInput(identity=people[0], strength=0.0))
    assert np.abs(off - expected).max() < 1e-4
    on = run(pipe, IdentityInput(identity=people[0], strength=3.0))
    assert np.abs(on - expected).max() > 1e-2


def test_unloading_restores_the_base_unet_bit_for_bit():
    pipe = FaceStudioPipeline(**tiny_components())
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        before = pipe.unet(sample, 10, text).sample
        config = idg.IdentityAdapterConfig(cross_attention_dim=pipe.unet.config.cross_attention_dim)
        pipe.load_adapters(identity=idg.new_identity_adapter(pipe.unet, config), identity_config=config)
        pipe.unload_adapters()
        after = pipe.unet(sample, 10, text).sample
    assert torch.equal(before, after)


def test_mixing(pipe, people):
    a, b = people
    alone = run(pipe, IdentityInput(identity=a))
    assert np.abs(run(pipe, IdentityInput(identity=a), IdentityInput(identity=b), mix=[1.0, 0.0]) - alone).max() < 1e-5
    ab = run(pipe, IdentityInput(identity=a), IdentityInput(identity=b), mix=[0.5, 0.5])
    ba = run(pipe, IdentityInput(identity=b), IdentityInput(identity=a), mix=[0.5, 0.5])
    assert np.abs(ab - ba).max() < 1e-5
    assert np.abs(ab - alone).max() > 1e-3


def test_reference_scale_zero_ignores_who_the_reference_is(pipe, people):
    a, b = people
    with_a = run(pipe, IdentityInput(identity=a, strength=2.0), reference_guidance_scale=0.0)
    with_b = run(pipe, IdentityInput(identity=b, strength=2.0), reference_guidance_scale=0.0)
    assert np.abs(with_a - with_b).max() < 1e-5
    assert np.abs(run(pipe, IdentityInput(identity=a, strength=2.0)) - with_a).max() > 1e-3


def test_same_seed_same_image_and_batch_equals_singles(pipe, people):
    person = IdentityInput(identity=people[0])
    assert np.array_equal(run(pipe, person), run(pipe, person))
    check_batch_equals_singles(pipe, person, run)


def test_two_threads_with_different_settings_match_running_alone(pipe, people):
    a, b = people
    check_threads_match_alone(pipe, run, {
        "a": dict(identities=[IdentityInput(identity=a, strength=1.5)], reference_guidance_scale=3.0, seed=1),
        "ab": dict(identities=[IdentityInput(identity=a, region=(0, 0, 32, 64)),
                               IdentityInput(identity=b, region=(32, 0, 64, 64), strength=0.5)], seed=2),
    })


def check_batch_equals_singles(pipe, person, run):
    """Two images of one call equal the single calls with the same seeds (`run(pipe, *identities, **call)`)."""
    batch = run(pipe, person, num_images_per_prompt=2, generator=[seed(5), seed(6)])
    for image, n in zip(batch, (5, 6)):
        assert np.abs(image - run(pipe, person, seed=n)[0]).max() < 1e-5


def check_threads_match_alone(pipe, run, jobs: dict):
    """Each job (name -> `identities` and `run`'s other keywords), run twice in each of two threads at once,
    equals running it alone: per-call settings never leak between concurrent calls."""
    def work(key):
        v = jobs[key]
        return run(pipe, *v["identities"], **{x: y for x, y in v.items() if x != "identities"})

    alone = {k: work(k) for k in jobs}
    for key, runs in run_in_threads(work, list(jobs), repeats=2).items():
        assert all(np.abs(r - alone[key]).max() < 1e-5 for r in runs)


def test_regions_keep_people_apart(pipe, people):
    a, b = people
    left_right = run(pipe, IdentityInput(identity=a, region=(0, 0, 32, 64)), IdentityInput(identity=b, region=(32, 0, 64, 64)))
    auto = run(pipe, IdentityInput(identity=a), IdentityInput(identity=b))  # automatic split: the same halves
    assert np.abs(left_right - auto).max() < 1e-5
    swapped = run(pipe, IdentityInput(identity=b, region=(0, 0, 32, 64)), IdentityInput(identity=a, region=(32, 0, 64, 64)))
    assert np.abs(left_right - swapped).max() > 1e-3


def test_save_and_load_round_trip(pipe, people, tmp_path):
    person = IdentityInput(identity=people[0], strength=2.0)
    before = run(pipe, person)
    (folder,) = pipe.save_adapters(tmp_path)
    assert (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()
    fresh = FaceStudioPipeline(**tiny_components())
    fresh.set_progress_bar_config(disable=True)
    fresh.load_adapters(identity=folder)
    ours, theirs = pipe.unet.state_dict(), fresh.unet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # outputs agree to float noise: the same weights at other memory addresses take other CPU kernels (~1e-6)
    assert np.abs(run(fresh, person) - before).max() < 1e-5


def test_from_pretrained_with_a_guidance_folder(pipe, people, tmp_path):
    """A saved base model plus `guidance=FOLDER` is the pipeline that wrote the folder."""
    person = IdentityInput(identity=people[0], strength=2.0)
    pipe.save_adapters(tmp_path / "guidance")
    FaceStudioPipeline(**tiny_components()).save_pretrained(tmp_path / "base")
    loaded = FaceStudioPipeline.from_pretrained(tmp_path / "base", guidance=tmp_path / "guidance")
    loaded.set_progress_bar_config(disable=True)
    assert [a.kind for a in loaded.facestudio_adapters] == ["identity"]
    assert np.abs(run(loaded, person) - run(pipe, person)).max() < 1e-5
    with pytest.raises(ModelFileError, match="no identity/ or style/"):
        loaded.load_guidance(tmp_path / "base")


def test_stock_diffusers_loads_a_facestudio_adapter(pipe, people, tmp_path):
    """Our checkpoint through plain `load_ip_adapter` gives the same UNet output as facestudio's path."""
    (folder,) = pipe.save_adapters(tmp_path)
    stock = StableDiffusionPipeline(**{k: v for k, v in tiny_components().items() if k != "image_encoder"})
    stock.load_ip_adapter(str(folder), subfolder="", weight_name=WEIGHTS_NAME, image_encoder_folder=None)
    identity = people[0]
    projection = stock.unet.encoder_hid_proj.image_projection_layers[0]
    projection.clip_embeds = torch.from_numpy(identity.detail)[None, None]
    projection.shortcut = True
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, stock.unet.config.cross_attention_dim)
    with torch.no_grad():
        theirs = stock.unet(sample, 10, text, added_cond_kwargs={
            "image_embeds": [torch.from_numpy(identity.embedding)[None, None]]}).sample
        config = pipe.facestudio_adapters[0].config
        tokens = idg.identity_tokens(pipe._projection(pipe.facestudio_adapters[0]), identity, config)
        ours = pipe.unet(sample, 10, text, added_cond_kwargs={"image_embeds": [tokens[None, None]]}).sample
    assert (ours - theirs).abs().max() < 1e-5


def test_face_into_a_scene_keeps_everything_outside_the_faces(pipe, people, faces_dir):
    scene = Image.open(faces_dir / "obama2.jpg").convert("RGB").resize((200, 384))
    out = pipe("a portrait photo", identities=[IdentityInput(identity=people[1])], scene_image=scene,
               height=384, width=200, num_inference_steps=3, generator=seed(), output_type="np")
    image = np.round(out.images[0] * 255).astype(np.uint8)
    assert image.shape == (384, 200, 3)
    original = np.asarray(scene.resize((200, 384)))
    face = pipe.face_analyzer.detect(original)[0]
    from facestudio.regions.scene import dilated_face

    outside = dilated_face(face, 200, 384) == 0
    assert outside.mean() > 0.5
    assert np.array_equal(image[outside], original[outside])
    assert np.abs(image[~outside].astype(int) - original[~outside]).mean() > 2  # the face was regenerated


def test_negative_prompt_and_scene_default_size(pipe, people, faces_dir):
    out = pipe("a portrait photo", negative_prompt="blurry", identities=[IdentityInput(identity=people[0])],
               scene_image=faces_dir / "obama2.jpg", num_inference_steps=1, generator=seed(), output_type="np")
    assert out.images.shape == (1, 512, 264, 3)  # the scene's 626x1200 shape, longest side 512


def test_style_adapter_beside_identity(people):
    pipe = new_pipe(style=True)
    person = IdentityInput(identity=people[0])
    plain = run(pipe, person)
    styled = run(pipe, person, style_image=Image.new("RGB", (64, 64), (200, 30, 30)), style_strength=3.0)
    assert np.abs(styled - plain).max() > 1e-3
    off = run(pipe, person, style_image=Image.new("RGB", (64, 64), (200, 30, 30)), style_strength=0.0)
    assert np.abs(off - plain).max() < 1e-5


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=65), "multiple of 8"),
    (dict(width=8192), "between 8 and 4096"),
    (dict(num_inference_steps=0), "at least 1"),
    (dict(mix=[0.5, 0.6]), "mix"),
    (dict(style_image=Image.new("RGB", (8, 8))), "no style adapter"),
    (dict(text_guidance_scale=float("nan")), "finite"),
])
def test_bad_calls_fail_before_any_work(pipe, people, kwargs, message):
    with pytest.raises(FaceStudioError, match=message):
        pipe("x", identities=[IdentityInput(identity=people[0]), IdentityInput(identity=people[1])],
             **{"num_inference_steps": 2, **kwargs})


def test_photo_problems_are_named(pipe, tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(noise)
    with pytest.raises(NoFaceError, match="noise.png: no face"):
        pipe("x", identities=[IdentityInput(photos=(noise,), name="me")], **SIZE)


def test_adapter_for_another_recogniser_is_refused(pipe, tmp_path):
    (folder,) = pipe.save_adapters(tmp_path)
    config = folder / CONFIG_NAME
    config.write_text(config.read_text().replace('"dlib"', '"arcface"'))
    fresh = FaceStudioPipeline(**tiny_components())
    with pytest.raises(ModelFileError, match="built for the 'arcface' face recogniser"):
        fresh.load_adapters(identity=folder)
    with pytest.raises(ModelFileError, match="no such folder"):
        fresh.load_adapters(identity=tmp_path / "nope")


@pytest.fixture(scope="module")
def pair(faces_dir) -> Image.Image:
    """Two people side by side, faces of like size: Obama (left), Biden (right)."""
    biden = np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))[:1200, 260:886]
    return Image.fromarray(np.concatenate([np.asarray(Image.open(faces_dir / "obama2.jpg").convert("RGB")), biden], 1))


def test_regions_segment_places_the_people_by_their_silhouettes_in_the_style_image(people, pair):
    pytest.importorskip("ai_edge_litert")
    from facestudio.regions import Segmented, resolve_regions

    pipe = new_pipe(style=True)
    two = [IdentityInput(identity=people[0]), IdentityInput(identity=people[1])]
    masks, edit = pipe.place_people(two, 2, 128, 128, "segment", pair, None, None)
    style = np.asarray(pair.resize((128, 128), Image.LANCZOS))
    assert edit is None
    assert np.array_equal(masks, resolve_regions(Segmented(), 2, (128, 128), analyzer=pipe.get_face_analyzer(), style=style))
    kw = dict(style_image=pair, height=128, width=128, num_inference_steps=2, output_type="np")
    segmented = pipe("two people", identities=two, regions="segment", generator=seed(), **kw)
    estimated = pipe("two people", identities=two, generator=seed(), **kw)
    assert segmented.settings["regions"] == "segment" and estimated.settings["regions"] == "auto"
    assert np.abs(segmented.images - estimated.images).max() > 1e-3  # the masks reached the attention


def test_regions_segment_with_a_scene_regenerates_only_its_faces(pipe, people, pair):
    pytest.importorskip("ai_edge_litert")
    from facestudio.regions import SceneFaces, resolve_regions

    two = [IdentityInput(identity=people[0]), IdentityInput(identity=people[1])]
    masks, edit = pipe.place_people(two, 2, 128, 128, "segment", None, pair, None)
    scene = np.asarray(pair.resize((128, 128), Image.LANCZOS))
    faces = resolve_regions(SceneFaces(), 2, (128, 128), analyzer=pipe.get_face_analyzer(), scene=scene)
    assert np.array_equal(edit.regenerated, np.maximum(faces[0], faces[1]))
    assert not np.any((masks[0] > 0) & (masks[1] > 0))
    assert (masks.sum(0) > 0).sum() > 2 * (edit.regenerated > 0).sum()  # attention over the bodies, not only faces


def test_gradients_reach_every_adapter_weight_and_no_base_weight(people):
    """Training (a later stage) needs this: the base frozen, every new module trainable."""
    pipe = new_pipe()
    unet = pipe.unet
    adapter_params = {n for n, _ in unet.named_parameters() if "_ip." in n or "encoder_hid_proj" in n}
    for name, p in unet.named_parameters():
        p.requires_grad_(name in adapter_params)
    adapter = pipe.facestudio_adapters[0]
    tokens = idg.identity_tokens(pipe._projection(adapter), people[0], adapter.config)
    out = unet(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, unet.config.cross_attention_dim),
               added_cond_kwargs={"image_embeds": [tokens[None, None]]}).sample
    out.square().mean().backward()
    grads = {n: p.grad for n, p in unet.named_parameters()}
    assert adapter_params and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in adapter_params)
    assert all(g is None for n, g in grads.items() if n not in adapter_params)


def test_a_damaged_adapter_fails_at_load_time(pipe, tmp_path):
    (folder,) = pipe.save_adapters(tmp_path)
    from facestudio.guidance.layout import read_checkpoint, save_checkpoint

    state = read_checkpoint(folder)
    state["ip_adapter"]["1.to_k_ip.weight"] = state["ip_adapter"]["1.to_k_ip.weight"][:, :-1]  # a wrong shape
    save_checkpoint(folder, state["image_proj"], state["ip_adapter"],
                    {**pipe.facestudio_adapters[0].config.to_dict()})
    with pytest.raises(ModelFileError, match="does not fit"):
        FaceStudioPipeline(**tiny_components()).load_adapters(identity=folder)
