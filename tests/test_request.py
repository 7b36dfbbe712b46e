"""One request: `GenerationSettings` (defaults, checks named per front end, size, metadata) and `GuidanceRows`."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from facestudio.errors import FaceStudioError
from facestudio.regions import Box
from facestudio.guidance.cfg import CONDITIONS, TWO_WAY, GuidanceRows, combine_guidance, combine_two_way
from facestudio.request import (DEFAULT_SIDE, DEFAULT_STEPS, DEFAULT_TEXT_SCALE, SDXL_DEFAULT_SIDE,
                                GenerationSettings, IdentityInput)

ROOT = Path(__file__).resolve().parents[1]
PERSON = IdentityInput(photos=("a.jpg",), name="a")


@pytest.mark.parametrize("change, cli, api, python", [
    (dict(num_inference_steps=0), "--steps 0", "steps 0", "num_inference_steps 0"),
    (dict(width=65), "--width 65", "width 65", "width 65"),
    (dict(count=0), "--num-images 0", "count 0", "count 0"),
    (dict(text_guidance_scale=float("nan")), "--text-scale nan", "text_guidance_scale nan", "text_guidance_scale nan"),
    (dict(scene_faces=(0,)), "--scene-faces needs --scene", "scene_faces needs scene_image",
     "scene_faces needs scene_image"),
    (dict(mix=(0.5, 0.6), identities=(PERSON, PERSON)), "--mix 0.5,0.6", "mix 0.5,0.6", "mix 0.5,0.6"),
])
def test_one_check_names_the_setting_as_each_front_end_does(change, cli, api, python):
    settings = GenerationSettings("a photo", **change)
    for front, words in (("cli", cli), ("api", api), ("python", python)):
        with pytest.raises(FaceStudioError, match=words.replace("+", r"\+")):
            settings.validate(front)


def test_good_settings_pass_and_are_frozen():
    settings = GenerationSettings("a photo", identities=[PERSON], mix=None, scene_faces=None)
    assert settings.validate() is settings and settings.identities == (PERSON,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_inference_steps = 3
    bare = GenerationSettings("x", identities=["photo.jpg"])  # a photo alone stands for one person
    assert bare.identities == (IdentityInput(photos=("photo.jpg",)),)


def test_every_combination_rule_is_checked():
    two = (PERSON, dataclasses.replace(PERSON, strength=0.5))
    for settings, words in [
        (GenerationSettings("x", identities=two, mix=(0.5, 0.5)), "one face"),
        (GenerationSettings("x", mix=(1.0,), identities=(PERSON,)), "one weight per identity"),
        (GenerationSettings("x", scene_image="s.jpg"), "at least one identity"),
        (GenerationSettings("x", scene_image="s.jpg", identities=(dataclasses.replace(PERSON, region=(0, 0, 8, 8)),)),
         "drop region"),
        (GenerationSettings("x", identities=(dataclasses.replace(PERSON, region=(0, 0, 8, 8)),), regions="split"),
         "places every person"),
        (GenerationSettings("x", regions="everywhere"), "regions 'everywhere'"),
        (GenerationSettings("x", scene_image="s.jpg", identities=(PERSON,), scene_faces=(0, 1)), "give 1 face"),
        (GenerationSettings("x", identities=(IdentityInput(),)), "neither photos nor an encoded identity"),
        (GenerationSettings("x", seed=-1), "seed -1"),
        (GenerationSettings("x", output_type="jpeg"), "output_type"),
        (GenerationSettings(3), "prompt must be a string"),
    ]:
        with pytest.raises(FaceStudioError, match=words):
            settings.validate()


def test_size_and_reference_scale_resolved_once():
    settings = GenerationSettings("x", text_guidance_scale=5.0)
    resolved = settings.resolved(DEFAULT_SIDE)
    assert (resolved.width, resolved.height, resolved.reference_guidance_scale) == (512, 512, 5.0)
    assert settings.output_size(SDXL_DEFAULT_SIDE) == (1024, 1024)
    assert settings.output_size(DEFAULT_SIDE, (626, 1200)) == (264, 512)  # a scene's shape, longest side 512
    assert GenerationSettings("x", width=64).output_size(DEFAULT_SIDE, (626, 1200)) == (64, 512)
    assert GenerationSettings("x").num_inference_steps == DEFAULT_STEPS
    assert GenerationSettings("x").text_guidance_scale == DEFAULT_TEXT_SCALE


def test_metadata_is_the_settings_in_the_shared_keys():
    meta = GenerationSettings("a photo", "blurry", (PERSON, PERSON), mix=[0.3, 0.7], text_guidance_scale=4.0,
                              num_inference_steps=9, width=64, height=32, count=2).metadata()
    assert meta == {"prompt": "a photo", "negative_prompt": "blurry", "mix": [0.3, 0.7], "style_strength": None,
                    "scene_faces": None, "regions": "auto", "steps": 9, "text_guidance_scale": 4.0, "reference_guidance_scale": 4.0,
                    "width": 64, "height": 32, "num_images": 2, "scheduler": "euler-a", "speed": None,
                    "reference_guidance_start": None, "shortcut_scale": None, "decoder": "full"}
    assert GenerationSettings("x", style_image="s.png", style_strength=2.0).metadata()["style_strength"] == 2.0
    assert GenerationSettings("x", regions="split").metadata()["regions"] == "split"


def test_regions_are_checked_by_the_regions_stage_and_named_per_front_end():
    settings = GenerationSettings("x", identities=(PERSON,), regions="split", scene_image="s.jpg")
    for front, words in (("cli", "--regions 'split': with --scene"), ("api", "regions 'split': with scene_image")):
        with pytest.raises(FaceStudioError, match=words):
            settings.validate(front)
    assert isinstance(dataclasses.replace(PERSON, region=(0, 0, 8, 8)).region, Box)


# --- the guidance rows ----------------------------------------------------------------------------------


def test_guidance_rows_own_the_order_and_the_combination():
    three, two = GuidanceRows.for_call(True), GuidanceRows.for_call(False)
    assert three.conditions == CONDITIONS and two.conditions == TWO_WAY and (len(three), len(two)) == (3, 2)
    negative, positive = torch.zeros(1, 2), torch.ones(1, 2)
    assert three.text(negative, positive)[:, 0].tolist() == [0, 1, 1]
    assert [float(r) for r in three.references(torch.tensor(0.0), torch.tensor(1.0))] == [0, 0, 1]
    assert [float(r) for r in two.references(torch.tensor(0.0), torch.tensor(1.0))] == [0, 1]  # [negative; positive]
    eps = torch.randn(6, 4)
    assert torch.equal(three.combine(eps, 7.5, 2.0), combine_guidance(eps, 7.5, 2.0))
    assert torch.equal(two.combine(eps[:4], 7.5, 2.0), combine_two_way(eps[:4], 7.5))
    assert three.latents(torch.ones(2, 4)).shape == (6, 4)


# --- the keyword form and the settings form are one call ------------------------------------------------


def test_settings_and_keywords_make_the_same_image(faces_dir):
    from test_pipeline import new_pipe

    pipe = new_pipe()
    person = IdentityInput(photos=(faces_dir / "obama.jpg",), name="obama")
    keywords = pipe("a portrait", identities=[person], reference_guidance_scale=3.0, num_inference_steps=2,
                    height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(5))
    settings = GenerationSettings("a portrait", identities=(person,), reference_guidance_scale=3.0,
                                  num_inference_steps=2, height=64, width=64, output_type="np", seed=5)
    steps = []
    given = pipe(settings, on_step=lambda step, total: steps.append((step, total)))
    assert np.array_equal(keywords.images, given.images) and steps == [(1, 2), (2, 2)]
    assert given.settings["reference_guidance_scale"] == 3.0 and given.settings["identities"] == ["obama"]
    latents = pipe(dataclasses.replace(settings, output_type="latent")).images
    assert latents.shape == (1, 4, 8, 8)


# --- the defaults, once --------------------------------------------------------------------------------


DEFAULTS = {DEFAULT_STEPS, DEFAULT_TEXT_SCALE, DEFAULT_SIDE, SDXL_DEFAULT_SIDE}
WORDS = ("step", "scale", "side", "width", "height")  # a limit (max_side, --max-side) is not a default


def _literal_defaults(tree: ast.AST):
    """`(name, value)` of every default written as a number literal: parameters, class fields, `default=`."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            yield from ((a.arg, d) for a, d in pairs)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            yield node.target.id, node.value
        elif isinstance(node, ast.Call):
            option = next((a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)), "")
            yield from ((option, k.value) for k in node.keywords if k.arg == "default")
        elif isinstance(node, ast.Assign):
            yield from ((t.id, node.value) for t in node.targets if isinstance(t, ast.Name))


def test_default_steps_scales_and_side_are_written_in_one_module():
    found = []
    for path in [*(ROOT / "src" / "facestudio").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        if path.name == "request.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # a network config's `width` (EVA-CLIP's `width: int = 1024`) is a layer's size, not an image's
        for config in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("Config")]:
            config.body = [n for n in config.body if not (isinstance(n, ast.AnnAssign)
                                                          and getattr(n.target, "id", "") == "width")]
        for name, value in _literal_defaults(tree):
            if (isinstance(value, ast.Constant) and type(value.value) in (int, float) and value.value in DEFAULTS
                    and any(w in name.lower() for w in WORDS) and "max" not in name.lower()):
                found.append(f"{path.relative_to(ROOT)}: {name} = {value.value}")
    assert found == []
    # and the check itself sees such a default
    assert list(_literal_defaults(ast.parse("def f(steps=25): pass")))[0][0] == "steps"


def test_latent_output_frees_the_offload_hooks_like_the_others():
    """`maybe_free_model_hooks` re-installs model offloading after a call (fresh hooks): "latent" included."""
    from test_pipeline import new_pipe

    pipe = new_pipe()
    pipe.enable_model_cpu_offload(device="cpu")
    for output_type in ("np", "latent"):
        before = list(pipe._all_hooks)  # held, so that a new hook cannot reuse an old one's id
        pipe("x", num_inference_steps=1, height=64, width=64, output_type=output_type)
        assert before and not {id(h) for h in before} & {id(h) for h in pipe._all_hooks}, output_type
