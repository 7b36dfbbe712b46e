"""The few-step settings on every front: PlusV2's shortcut scale per call, the server's defaults from its speed
model and preset (negative prompt), and what /v1/models says about them."""

from __future__ import annotations


import httpx
import pytest
import torch
from safetensors.torch import save_file

from facestudio.errors import FaceStudioError
from facestudio.guidance import public_identity as pid
from facestudio.guidance import public_layouts as layouts
from facestudio.guidance import style as sty
from facestudio.guidance.cfg import TWO_WAY, GuidanceRows
from facestudio.imaging import read_png_metadata
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput
from facestudio.presets import PRESETS
from facestudio.sampling.speed import SPEED_MODELS, load_speed_model
from test_server_api import wait
from test_speed import speed_lora

pytest.importorskip("peft", minversion="0.17")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")

CLIP = sty.tiny_style_encoder()


def plus_pipe(tmp_path, analyzer, kind="faceid-plusv2") -> FaceStudioPipeline:
    unet = tiny_components()["unet"]
    layout = layouts.faceid_plus(unet, lora_rank=4, clip_dim=CLIP.model.config.hidden_size) \
        if kind != "faceid" else layouts.faceid(unet, lora_rank=4)
    generator = torch.Generator().manual_seed(5)
    save_file({k: 0.2 * torch.randn(s, generator=generator) for k, s in layout.items()}, str(tmp_path / "a.safetensors"))
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    config = pid.PublicIdentityConfig(projection=kind, recognizer="arcface", cross_attention_dim=64, lora_rank=4,
                                      image_encoder="" if kind == "faceid" else "tiny")
    pipe.load_public_adapters((str(tmp_path), "a.safetensors", None), identity_config=config,
                              face_analyzer=analyzer, identity_encoder=None if kind == "faceid" else CLIP)
    return pipe


def test_the_shortcut_scale_is_a_per_call_setting(tmp_path, arcface_analyzer, faces_dir):
    pipe = plus_pipe(tmp_path, arcface_analyzer)
    person = pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",))], None)[0]
    rows = GuidanceRows(TWO_WAY)
    default = pipe.identity_tokens([person], 1, rows)
    assert pipe.shortcut_scale() == 1.0
    assert torch.equal(pipe.identity_tokens([person], 1, rows, shortcut_scale=1.0), default)
    assert torch.abs(pipe.identity_tokens([person], 1, rows, shortcut_scale=3.0) - default).max() > 1e-3
    assert pipe.shortcut_scale() == 1.0  # the adapter itself is unchanged
    images = [pipe("a photo", identities=[IdentityInput(identity=person)], shortcut_scale=s, height=64, width=64,
                   num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
              for s in (0.0, 3.0)]
    assert abs(images[0] - images[1]).max() > 1e-3


def test_a_shortcut_scale_without_a_shortcut_is_refused(tmp_path, arcface_analyzer, faces_dir):
    pipe = plus_pipe(tmp_path, arcface_analyzer, kind="faceid")
    person = pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",))], None)[0]
    assert pipe.shortcut_scale() is None
    with pytest.raises(FaceStudioError, match="no shortcut"):
        pipe("a photo", identities=[IdentityInput(identity=person)], shortcut_scale=2.0, height=64, width=64)


def test_every_preset_has_a_negative_prompt_default():
    assert all(isinstance(p.negative_prompt, str) and p.negative_prompt for p in PRESETS.values())
    assert all(p.speed == "" or p.speed in SPEED_MODELS for p in PRESETS.values())


def test_the_server_takes_its_defaults_from_the_speed_model_and_the_preset(tmp_path):
    from facestudio.server import BackgroundServer, create_app

    model = SPEED_MODELS["lcm-sd15"]
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    save_file(speed_lora(pipe.unet, "kohya"), str(tmp_path / model.file.filename))
    load_speed_model(pipe, model, weights=tmp_path / model.file.filename)
    pipe.preset = PRESETS["plus-face-sd15"]  # as load_preset_pipeline marks it: its negative prompt is the default
    app = create_app(pipe, tmp_path / "data", max_side=64)
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        info = client.get("/v1/models").json()
        assert (info["speed"], info["default_steps"], info["negative_prompt"]) == \
            ("lcm-sd15", 4, PRESETS["plus-face-sd15"].negative_prompt)
        assert "dpmpp-2m-karras" in info["schedulers"] and info["shortcut_scale"] is None
        job = client.post("/v1/generations", json={"prompt": "a photo", "width": 64, "height": 64}).json()
        status = wait(client, job["id"])
        assert status["state"] == "done" and status["total_steps"] == 4, status
        (tmp_path / "image.png").write_bytes(client.get(status["images"][0]["url"]).content)
        meta = read_png_metadata(tmp_path / "image.png")
        assert (meta["scheduler"], meta["speed"], meta["text_guidance_scale"], meta["negative_prompt"]) == \
            ("lcm", "lcm-sd15", 1.0, PRESETS["plus-face-sd15"].negative_prompt)
        refused = client.post("/v1/generations", json={"prompt": "a", "speed": "tcd-sd15", "width": 64, "height": 64})
        assert refused.status_code in (400, 422) and "tcd-sd15" in refused.json()["error"]
        none = client.post("/v1/generations", json={"prompt": "a", "negative_prompt": "", "width": 64,
                                                    "height": 64, "steps": 1}).json()
        assert wait(client, none["id"])["state"] == "done"
