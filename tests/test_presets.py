"""Presets: the table, the offline fail-fast message, the licence line, and a whole `generate --preset` run.

The end-to-end run loads a preset exactly as a user's machine does, from huggingface_hub's cache with
HF_HUB_OFFLINE=1: the cache is filled here with tiny checkpoints in the preset's repository layout (the
FaceID-PlusV2 file as the tiny UNet's public layout, a tiny CLIP vision model as h94/IP-Adapter's
image_encoder) and the ArcFace model is a tiny ONNX network with buffalo_l's inputs and outputs.
"""

from __future__ import annotations

import logging

import pytest
import torch

from test_arcface import _export, _tiny_arcface
from conftest import cache_file
from facestudio.cli import main
from facestudio.guidance import public_layouts as layouts
from facestudio.guidance import style as sty
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline
from facestudio.presets import PRESETS, get_preset, missing_files, show_licence

pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")


def test_the_table():
    assert {"faceid-plusv2-sd15", "faceid-sd15", "plus-face-sd15"} <= set(PRESETS)
    assert PRESETS["plus-face-sd15"].recognizer == "" and not PRESETS["plus-face-sd15"].non_commercial
    assert all(PRESETS[n].non_commercial and PRESETS[n].recognizer == "arcface"
               for n in ("faceid-plusv2-sd15", "faceid-sd15"))
    with pytest.raises(Exception, match="unknown preset 'nope'; presets: faceid-plusv2-sd15"):
        get_preset("nope")


def test_offline_without_the_files_fails_fast_with_one_message(empty_hub, faces_dir, capsys):
    status = main(["generate", "--preset", "faceid-plusv2-sd15", "--prompt", "an astronaut",
                   "--identity", str(faces_dir / "obama.jpg"), "--output", str(empty_hub.parent / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("error:") == 1 and "Traceback" not in err
    for needed in ("offline", "w600k_r50.onnx", "h94/IP-Adapter-FaceID/ip-adapter-faceid-plusv2_sd15.bin",
                   "stable-diffusion-v1-5/stable-diffusion-v1-5", "h94/IP-Adapter/models/image_encoder"):
        assert needed in err
    # the one command that fetches all of it
    assert err.count("facestudio download") == 1
    assert "run: facestudio download faceid-plusv2-sd15 --no-style --accept-license insightface-noncommercial" in err
    assert "ip-adapter_sd15.safetensors" not in err  # the style adapter is only needed with --style
    assert not (empty_hub.parent / "out").exists()


def test_plus_face_needs_no_face_recogniser(empty_hub):
    missing = missing_files(PRESETS["plus-face-sd15"])
    assert missing and not any("ArcFace" in m for m in missing)


def test_preset_and_adapter_are_refused_together(faces_dir, capsys):
    status = main(["generate", "--preset", "plus-face-sd15", "--adapter", "tiny", "--prompt", "x",
                   "--identity", str(faces_dir / "obama.jpg")])
    assert status == 2 and "brings its own adapters" in capsys.readouterr().err


def test_licence_is_said_once(caplog):
    preset = PRESETS["faceid-sd15"]
    with caplog.at_level(logging.INFO, logger="facestudio"):
        show_licence(preset)
        show_licence(preset)
    lines = [r.getMessage() for r in caplog.records if "NON-COMMERCIAL" in r.getMessage()]
    assert len(lines) <= 1  # another test of this process may have shown it already
    show_licence.__globals__["_licences_shown"].discard(preset.name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="facestudio"):
        show_licence(preset)
        show_licence(preset)
    assert [r.levelname for r in caplog.records if "NON-COMMERCIAL" in r.getMessage()] == ["WARNING"]


def test_generate_with_a_preset_from_the_hub_cache(empty_hub, tmp_path, faces_dir):
    base = tmp_path / "tiny-base"
    FaceStudioPipeline(**tiny_components()).save_pretrained(base)
    unet = tiny_components()["unet"]
    clip = sty.tiny_style_encoder()
    generator = torch.Generator().manual_seed(0)
    state = {k: 0.2 * torch.randn(shape, generator=generator)
             for k, shape in layouts.faceid_plus(unet, clip_dim=clip.model.config.hidden_size).items()}  # rank 128
    cache_file(empty_hub, "h94/IP-Adapter-FaceID", "ip-adapter-faceid-plusv2_sd15.bin",
                lambda p: torch.save({part: {k.removeprefix(part + "."): v for k, v in state.items()
                                             if k.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}, p))
    for name in ("config.json", "model.safetensors"):
        cache_file(empty_hub, "h94/IP-Adapter", f"models/image_encoder/{name}",
                    lambda p: clip.model.save_pretrained(p.parent))
    arcface = _export(_tiny_arcface(0), tmp_path / "w600k_r50.onnx")
    out = tmp_path / "out"
    status = main(["generate", "--preset", "faceid-plusv2-sd15", "--base-model", str(base), "--arcface-model",
                   str(arcface), "--prompt", "an astronaut", "--identity", f"{faces_dir / 'obama.jpg'}",
                   "--steps", "2", "--width", "64", "--height", "64", "--output", str(out)])
    assert status == 0
    (image,) = out.glob("*.png")
    from facestudio.imaging import read_png_metadata

    settings = read_png_metadata(image)
    assert "faceid-plusv2-sd15" in str(settings) and "ip-adapter-faceid-plusv2_sd15.bin" in str(settings)


def test_style_blocks_act_on_their_presets_unet():
    """The preset's style block scales leave some style layer on in its base model's UNet (SD 1.5's up_blocks.0
    has no attention: SDXL's blocks there would switch the style adapter off everywhere)."""
    import accelerate
    from diffusers import UNet2DConditionModel

    from facestudio.guidance.style import acting_layers
    from facestudio.models import sd15_unet_config
    from facestudio.presets import STYLE_BLOCKS_SDXL
    from test_public_layouts import SDXL_UNET_CONFIG

    with accelerate.init_empty_weights():
        unets = {False: UNet2DConditionModel(**sd15_unet_config()), True: UNet2DConditionModel(**SDXL_UNET_CONFIG)}
    for preset in (p for p in PRESETS.values() if not p.flux):  # FLUX presets have no UNet and no style adapter
        layers = acting_layers(unets[preset.sdxl], preset.style_blocks)
        assert layers and all(".attentions.1." in name for name in layers), preset.name
    assert acting_layers(unets[False], STYLE_BLOCKS_SDXL) == []


def test_sdxl_preset_boxes_are_checked_against_its_1024_default(empty_hub, faces_dir, capsys):
    args = ["generate", "--preset", "faceid-sdxl", "--prompt", "x", "--identity", str(faces_dir / "obama.jpg")]
    assert main([*args, "--region", "0,0,700,700"]) == 2
    assert "needs files that are not here" in capsys.readouterr().err  # the box passed; the weights are missing
    assert main([*args, "--region", "0,0,1100,700"]) == 2
    assert "not a box inside the 1024x1024 image" in capsys.readouterr().err
