"""The PuLID presets: their rows, the offline fail-fast message, and `generate --preset pulid-sdxl` with two
people in their regions from a model hub cache filled with tiny checkpoints in the published names and layouts."""

import sys
from pathlib import Path

import pytest

from facestudio.cli import main
from facestudio.presets import PRESETS, missing_files

sys.path.insert(0, str(Path(__file__).parent / "support"))


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty model hub cache, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_the_rows():
    fast, base = PRESETS["pulid-sdxl"], PRESETS["pulid-sdxl-base"]
    assert (fast.adapter.filename, fast.unet.filename) == ("pulid_v1.bin", "sdxl_lightning_4step_unet.safetensors")
    assert (fast.steps, fast.scheduler, fast.timestep_spacing, fast.text_guidance_scale) == (4, "euler", "trailing", 1.2)
    assert (base.adapter.filename, base.unet, base.steps, base.scheduler) == ("pulid_v1.1.safetensors", None, 25,
                                                                              "dpmpp-2m-karras")
    for preset in (fast, base):
        assert preset.sdxl and preset.non_commercial and preset.projection == "pulid"
        assert all(word in preset.licence for word in ("Apache-2.0", "antelopev2", "non-commercial", "OpenRAIL++"))


def test_offline_without_the_files_fails_fast_with_one_message(empty_hub, faces_dir, capsys):
    out = empty_hub.parent / "out"
    status = main(["generate", "--preset", "pulid-sdxl", "--prompt", "two friends", "--identity",
                   str(faces_dir / "obama.jpg"), "--identity", str(faces_dir / "biden.jpg"), "--region", "0,0,512,1024",
                   "--region", "512,0,1024,1024", "--output", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("error:") == 1 and "Traceback" not in err
    for needed in ("hf download guozinan/PuLID pulid_v1.bin",
                   "hf download ByteDance/SDXL-Lightning sdxl_lightning_4step_unet.safetensors",
                   "hf download stabilityai/stable-diffusion-xl-base-1.0",
                   "hf download QuanSun/EVA-CLIP EVA02_CLIP_L_336_psz14_s6B.pt"):
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
