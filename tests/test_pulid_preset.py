"""The PuLID presets: their rows, the offline fail-fast message, and `generate --preset pulid-sdxl` with two
people in their regions from a model hub cache filled with tiny checkpoints in the published names and layouts."""

import sys
from pathlib import Path

import pytest

from conftest import cache_file
from facestudio.cli import main
from facestudio.presets import PRESETS, missing_files

sys.path.insert(0, str(Path(__file__).parent / "support"))


def test_the_rows():
    fast, base = PRESETS["pulid-sdxl"], PRESETS["pulid-sdxl-base"]
    assert (fast.adapter.filename, fast.unet.filename) == ("pulid_v1.bin", "sdxl_lightning_4step_unet.safetensors")
    assert (fast.steps, fast.scheduler, fast.timestep_spacing, fast.text_guidance_scale) == (4, "euler", "trailing", 1.2)
    assert (base.adapter.filename, base.unet, base.steps, base.scheduler) == ("pulid_v1.1.safetensors", None, 25,
                                                                              "dpmpp-2m-karras")
    for preset in (fast, base):
        assert preset.sdxl and preset.non_commercial and preset.projection == "pulid"
        assert all(word in preset.licence for word in ("Apache-2.0", "antelopev2", "non-commercial", "OpenRAIL++"))


def test_serve_takes_the_pulid_files_and_mode_and_refuses_them_elsewhere(empty_hub, tmp_path, capsys):
    from facestudio.cli.generate import PULID_MODES
    from facestudio.guidance.kinds.pulid import MODES

    assert PULID_MODES == tuple(MODES)  # the CLI's copy, for answers before torch loads
    mine = tmp_path / "mine" / "glintr100.onnx"
    status = main(["serve", "--preset", "pulid-sdxl", "--antelopev2-model", str(mine), "--pulid-mode", "neutral",
                   "--data-dir", str(tmp_path / "data"), "--port", "0"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"the antelopev2 face recogniser (glintr100.onnx) {mine}" in err  # the file named, not the pack
    assert "insightface antelopev2" not in err and "run: facestudio download pulid-sdxl" in err
    for options, words in ((["--preset", "faceid-sd15", "--bisenet-model", "x.pth"], "are for the PuLID presets"),
                           (["--preset", "pulid-flux-schnell", "--pulid-mode", "neutral"], "PuLID-FLUX has no modes")):
        assert main(["serve", *options, "--data-dir", str(tmp_path / "data2")]) == 2
        assert words in capsys.readouterr().err


def test_offline_without_the_files_fails_fast_with_one_message(empty_hub, faces_dir, capsys):
    out = empty_hub.parent / "out"
    status = main(["generate", "--preset", "pulid-sdxl", "--prompt", "two friends", "--identity",
                   str(faces_dir / "obama.jpg"), "--identity", str(faces_dir / "biden.jpg"), "--region", "0,0,512,1024",
                   "--region", "512,0,1024,1024", "--output", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("error:") == 1 and "Traceback" not in err
    for needed in ("adapter: guozinan/PuLID/pulid_v1.bin",
                   "ByteDance/SDXL-Lightning/sdxl_lightning_4step_unet.safetensors",
                   "base model: stabilityai/stable-diffusion-xl-base-1.0",
                   "QuanSun/EVA-CLIP/EVA02_CLIP_L_336_psz14_s6B.pt", "glintr100.onnx",
                   "run: facestudio download pulid-sdxl",
                   "--antelopev2-model", "non-commercial", "parsing_bisenet.pth",
                   "facestudio download bisenet"):
        assert needed in err
    assert not out.exists()
    assert not any("Lightning" in line for line in missing_files(PRESETS["pulid-sdxl-base"]))


def test_pulid_mode_needs_a_pulid_preset(faces_dir, capsys):
    status = main(["generate", "--preset", "faceid-sdxl", "--pulid-mode", "neutral", "--prompt", "x",
                   "--identity", str(faces_dir / "obama.jpg")])
    assert status == 2 and "--pulid-mode is for the PuLID presets: pulid-sdxl, pulid-sdxl-base" in capsys.readouterr().err


def test_the_comparison_specs_share_people_prompts_and_seeds():
    from facestudio.evaluation.runspec import load_spec

    folder = Path(__file__).parent.parent / "examples" / "pulid-vs-faceid"
    pulid, faceid = load_spec(folder / "pulid-sdxl.toml"), load_spec(folder / "faceid-plusv2-sd15.toml")
    assert (pulid.preset, faceid.preset) == ("pulid-sdxl", "faceid-plusv2-sd15")
    assert (pulid.identities, pulid.groups, pulid.prompts, pulid.seeds, pulid.negative_prompt) == \
        (faceid.identities, faceid.groups, faceid.prompts, faceid.seeds, faceid.negative_prompt)
    assert all(Path(p).is_file() for person in pulid.identities.values() for p in person["photos"] + person["held_out"])
    assert (pulid.steps, pulid.width, pulid.scheduler, pulid.settings[0].text_scale) == (4, 1024, "euler", 1.2)
    assert faceid.scheduler == "euler-a"


@pytest.mark.slow  # about 20 s of CPU: the encoder's files are written and read, a BiSeNet runs per photo
def test_generate_two_people_with_pulid_sdxl_from_the_hub_cache(empty_hub, tmp_path, faces_dir):
    """`generate --preset pulid-sdxl` as a user runs it, with every file in its published name and layout at tiny
    widths: SDXL base (its folder layout), SDXL-Lightning's UNet file, pulid_v1.bin, EVA-CLIP's .pt in the hub
    cache; BiSeNet and antelopev2 given as local files."""
    pytest.importorskip("onnxscript", reason="the tiny antelopev2 ONNX file is exported with onnxscript")
    import shutil

    import torch
    from diffusers import StableDiffusionXLPipeline
    from pulid_tiny import random_pulid_checkpoint, tiny_pulid_components, tiny_pulid_files, tiny_sdxl_unet
    from safetensors.torch import save_file

    from facestudio.imaging import TRAINED_ALGORITHMIC_MEDIA, read_png_metadata

    components = tiny_pulid_components()
    cache_file(empty_hub, "stabilityai/stable-diffusion-xl-base-1.0", "model_index.json",
           lambda p: StableDiffusionXLPipeline(**components).save_pretrained(p.parent))
    cache_file(empty_hub, "ByteDance/SDXL-Lightning", "sdxl_lightning_4step_unet.safetensors",
           lambda p: save_file(tiny_sdxl_unet(seed=7).state_dict(), p))
    cache_file(empty_hub, "guozinan/PuLID", "pulid_v1.bin",
           lambda p: torch.save(random_pulid_checkpoint(components["unet"], version="v1"), p))
    files = tiny_pulid_files(tmp_path / "files", "v1")
    cache_file(empty_hub, "QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt", lambda p: shutil.copy(files["eva_clip"], p))
    out = tmp_path / "out"
    status = main(["generate", "--preset", "pulid-sdxl", "--pulid-sizes", "tiny", "--prompt", "two friends",
                   "--identity", str(faces_dir / "obama.jpg"), "--identity", str(faces_dir / "biden.jpg"),
                   "--region", "0,0,32,64", "--region", "32,0,64,64", "--width", "64", "--height", "64",
                   "--antelopev2-model", files["antelopev2"], "--bisenet-model", files["bisenet"],
                   "--pulid-mode", "extremely-style", "--output", str(out)])
    assert status == 0
    (image,) = out.glob("*.png")
    metadata = read_png_metadata(image)
    assert metadata["ai_generated"] and metadata["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert (metadata["preset"], metadata["pulid_mode"]) == ("pulid-sdxl", "extremely-style")
    assert [a["source"] for a in metadata["adapters"]] == ["guozinan/PuLID/pulid_v1.bin"]
    assert (metadata["steps"], metadata["scheduler"], metadata["text_guidance_scale"]) == (4, "euler", 1.2)
    assert [(p["photos"], p["region"]) for p in metadata["identities"]] == [
        (["obama.jpg"], [0, 0, 32, 64]), (["biden.jpg"], [32, 0, 64, 64])]
    # what the command loaded: the Lightning UNet's weights, Euler with trailing timesteps, the mode's ortho
    from facestudio.guidance.pulid.attention import PuLIDAttnProcessor
    from facestudio.presets import load_preset_pipeline

    pipe = load_preset_pipeline("pulid-sdxl", device="cpu", pulid_sizes="tiny", pulid_mode="extremely-style",
                                local_files={"antelopev2": files["antelopev2"], "bisenet": files["bisenet"]})
    lightning = tiny_sdxl_unet(seed=7).state_dict()
    assert all(torch.equal(v, lightning[k]) for k, v in pipe.unet.state_dict().items() if k in lightning)
    assert pipe.scheduler.config.timestep_spacing == "trailing" and type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert {p.ortho for p in pipe.unet.attn_processors.values() if isinstance(p, PuLIDAttnProcessor)} == {"v1"}
