"""`facestudio download` and first-use downloading, against a model hub of our own on loopback.

The real huggingface_hub client (and diffusers through it) downloads from `support.hub_server`, which serves
tiny checkpoints under the real repository ids and file names of the SD 1.5 presets, and insightface's
buffalo_l.zip under its GitHub release path (`FACESTUDIO_INSIGHTFACE_URL`). Every run starts from an empty
cache and an empty home folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facestudio import downloads
from facestudio.presets import PRESETS, HubFile
from support.hub_server import (FACEXLIB_RELEASE_PATH, INSIGHTFACE_RELEASE_PATH, HubRepo, facestudio_hub,
                                insightface_sha256_env)

pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
PRESET = "faceid-plusv2-sd15"
ACCEPT = ["--accept-license", "insightface-noncommercial"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with facestudio_hub(tmp_path_factory.mktemp("hub-build")) as server:
        yield server


@pytest.fixture
def env(hub, tmp_path):
    """A user with an empty home and cache, online to the loopback hub."""
    hub.requests.clear()
    hub.corrupt.clear()
    hub.drop_after.clear()
    home = tmp_path / "home"
    home.mkdir()
    values = {**os.environ, **hub.env(), **insightface_sha256_env(hub), "HOME": str(home),
              "HF_HOME": str(home / ".cache" / "huggingface"), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "FACESTUDIO_ARCFACE_MODEL", "TQDM_POSITION"):
        values.pop(name, None)
    return values


def facestudio(env, *args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "facestudio.cli", *args], env=env, capture_output=True, text=True,
                          stdin=stdin, timeout=600)


def hub_cache(env) -> Path:
    return Path(env["HF_HOME"]) / "hub"


def test_download_from_an_empty_cache_then_nothing_more(env, hub):
    first = facestudio(env, "download", PRESET, *ACCEPT)
    assert first.returncode == 0, first.stderr
    err = first.stderr
    # sizes and licences before, a progress bar per file, the insightface pack from its release address
    assert "unet/diffusion_pytorch_model.safetensors" in err and " kB" in err and "to download" in err
    assert err.index("to download") < err.index("100%|")
    assert "CreativeML OpenRAIL-M" in err and "non-commercial" in err and "Apache-2.0" in err
    assert err.count("100%|") >= 8, err  # huggingface_hub's bars, one per file
    assert f"{INSIGHTFACE_RELEASE_PATH}/buffalo_l.zip" in err
    fetched = hub.downloads()
    assert f"{INSIGHTFACE_RELEASE_PATH}/buffalo_l.zip" in fetched
    # only what the preset needs: no decoy (single-file checkpoints, .bin/fp16 copies, the safety checker)
    snapshot = next((hub_cache(env) / f"models--{SD15.replace('/', '--')}" / "snapshots").iterdir())
    got = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    assert got == sorted(downloads.pipeline_files(hub.repos[SD15].files, _index(hub)))
    assert not any("safety_checker" in p or "fp16" in p or "pruned" in p or p.endswith(".bin") for p in got)
    assert (Path(env["HOME"]) / ".insightface/models/buffalo_l/w600k_r50.onnx").is_file()
    assert not list((Path(env["HOME"]) / ".insightface/models").glob("*.zip*"))

    hub.requests.clear()
    second = facestudio(env, "download", PRESET, *ACCEPT)
    assert second.returncode == 0, second.stderr
    assert "nothing to download" in second.stderr and hub.downloads() == []
    offline = facestudio({**env, "HF_HUB_OFFLINE": "1"}, "download", PRESET)
    assert offline.returncode == 0 and "everything is already here" in offline.stderr, offline.stderr


def test_the_tiny_decoder_is_listed_fetched_alone_and_used_offline(env, hub, faces_dir, tmp_path):
    """`--decoder tiny` adds TAESD to what a preset needs (its name in the one command); `facestudio download
    taesd` fetches its config and safetensors only, and an offline run then decodes with it."""
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    run = facestudio(offline, "generate", "--preset", PRESET, "--decoder", "tiny", "--prompt", "x", "--identity",
                     str(faces_dir / "obama.jpg"), "--output", str(tmp_path / "out"))
    assert run.returncode == 2 and "  - tiny decoder: madebyollin/taesd" in run.stderr
    assert f"run: facestudio download {PRESET} taesd --no-style" in run.stderr
    fetched = facestudio(env, "download", "taesd")
    assert fetched.returncode == 0, fetched.stderr
    snapshot = next((hub_cache(env) / "models--madebyollin--taesd" / "snapshots").iterdir())
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    done = facestudio(offline, "generate", "--prompt", "x", "--base-model", "tiny", "--decoder", "tiny",
                      "--tiny-decoder", "madebyollin/taesd", "--steps", "1", "--width", "64", "--height", "64",
                      "--output", str(tmp_path / "tiny"))
    assert done.returncode == 0, done.stderr
    from facestudio.imaging import read_png_metadata

    assert read_png_metadata(tmp_path / "tiny" / "000-seed0.png")["decoder"] == "tiny"


@pytest.mark.slow
def test_download_then_generate(env, hub, faces_dir, tmp_path):
    """The issue's route: `facestudio download PRESET --accept-license ...`, then `generate --preset` writes an
    image, fetching nothing more."""
    assert facestudio(env, "download", PRESET, "--no-style", *ACCEPT).returncode == 0
    hub.requests.clear()
    out = tmp_path / "out"
    run = facestudio(env, "generate", "--preset", PRESET, "--prompt", "an astronaut", "--identity",
                     str(faces_dir / "obama.jpg"), "--steps", "2", "--width", "64", "--height", "64",
                     "--output", str(out))
    assert run.returncode == 0, run.stderr
    (image,) = out.glob("*.png")
    assert hub.downloads() == []


def _index(hub) -> dict:
    import json

    return json.loads(hub.repos[SD15].files["model_index.json"])


def test_a_corrupted_download_is_detected_and_removed(env, hub):
    hub.corrupt.add(("h94/IP-Adapter-FaceID", "ip-adapter-faceid-plusv2_sd15.bin"))
    run = facestudio(env, "download", PRESET, "--no-style", *ACCEPT)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "ip-adapter-faceid-plusv2_sd15.bin: damaged download (sha256" in run.stderr
    assert not list(hub_cache(env).glob("models--h94--IP-Adapter-FaceID/blobs/*"))  # nothing bad kept
    hub.corrupt.clear()
    again = facestudio(env, "download", PRESET, "--no-style", *ACCEPT)
    assert again.returncode == 0, again.stderr


def test_a_broken_connection_resumes_with_a_range_request(env, hub):
    """huggingface_hub resumes a broken transfer with `Range` from what it has written (it writes in 10 MiB
    chunks, so the file is larger than one)."""
    repo, path = "facestudio-tests/large-pipeline", "unet/diffusion_pytorch_model.safetensors"
    data = os.urandom(24 << 20)
    hub.add(HubRepo(repo, {"model_index.json": b'{"_class_name": "StableDiffusionPipeline", "unet": '
                                                 b'["diffusers", "UNet2DConditionModel"]}',
                           "unet/config.json": b"{}", path: data}))
    hub.drop_after[(repo, path)] = 15 << 20
    run = facestudio(env, "download", repo)
    assert run.returncode == 0, run.stderr
    sha = hashlib.sha256(data).hexdigest()
    ranges = [r for method, p, r in hub.requests if p == f"/lfs/{sha}" and method == "GET"]
    assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    snapshot = next((hub_cache(env) / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    assert (snapshot / path).read_bytes() == data


def test_insightface_needs_its_licence_accepted(env, hub):
    run = facestudio(env, "download", "buffalo_l")
    assert run.returncode == 2 and "--accept-license insightface-noncommercial" in run.stderr
    assert "non-commercial" in run.stderr and hub.downloads() == []
    answered = facestudio(env, "download", PRESET, "--no-style")  # no terminal to ask at: nothing fetched
    assert answered.returncode == 2 and hub.downloads() == []


def test_an_interrupted_pack_download_resumes(env, hub):
    zip_path = f"{INSIGHTFACE_RELEASE_PATH}/buffalo_l.zip"
    data = hub.static[zip_path]
    models = Path(env["HOME"]) / ".insightface" / "models"
    models.mkdir(parents=True)
    (models / "buffalo_l.zip.part").write_bytes(data[:1000])
    run = facestudio(env, "download", "buffalo_l", *ACCEPT)
    assert run.returncode == 0, run.stderr
    assert [r for m, p, r in hub.requests if p == zip_path] == ["bytes=1000-"]
    assert (models / "buffalo_l" / "w600k_r50.onnx").is_file() and not (models / "buffalo_l.zip.part").exists()


def test_bisenet_comes_from_facexlibs_release_without_a_licence_prompt(env, hub):
    from facestudio.guidance.pulid.parsing import load_parser

    run = facestudio(env, "download", "bisenet")
    assert run.returncode == 0, run.stderr
    assert "facexlib bisenet" in run.stderr and "licence: MIT" in run.stderr
    path = Path(env["HOME"]) / ".cache" / "facestudio" / "parsing_bisenet.pth"
    assert path.read_bytes() == hub.static[f"{FACEXLIB_RELEASE_PATH}/parsing_bisenet.pth"]
    load_parser(path)  # the downloaded file is facexlib's layout
    again = facestudio(env, "download", "bisenet")
    assert again.returncode == 0 and hub.downloads().count(f"{FACEXLIB_RELEASE_PATH}/parsing_bisenet.pth") == 1


def test_offline_one_message_with_the_one_command(env, faces_dir, tmp_path):
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    run = facestudio(offline, "generate", "--preset", PRESET, "--prompt", "x", "--identity",
                     str(faces_dir / "obama.jpg"), "--output", str(tmp_path / "out"))
    assert run.returncode == 2 and run.stderr.count("error:") == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("facestudio download") == 1 and "offline" in run.stderr
    download = facestudio(offline, "download", PRESET, "--no-style")
    assert download.returncode == 2 and download.stderr.count("error:") == 1
    assert f"run: facestudio download {PRESET} --no-style --accept-license insightface-noncommercial" in download.stderr
    assert "  - adapter: h94/IP-Adapter-FaceID/ip-adapter-faceid-plusv2_sd15.bin" in download.stderr


def test_without_consent_generate_names_the_command(env, faces_dir, tmp_path):
    run = facestudio(env, "generate", "--preset", PRESET, "--prompt", "x", "--identity",
                     str(faces_dir / "obama.jpg"), "--output", str(tmp_path / "out"))
    assert run.returncode == 2 and "--download" in run.stderr and f"facestudio download {PRESET}" in run.stderr


@pytest.mark.slow
def test_the_base_model_files_are_the_ones_diffusers_picks(env, hub, tmp_path):
    """Oracle: diffusers' own download (same repository, the safety checker left out as facestudio does)
    fetches the same files as `pipeline_files` picks."""
    code = ("import sys; from pathlib import Path; from diffusers import StableDiffusionPipeline; "
            f"f = Path(StableDiffusionPipeline.download({SD15!r}, safety_checker=None)); "
            "print('\\n'.join(sorted(p.relative_to(f).as_posix() for p in f.rglob('*') if p.is_file())))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(downloads.pipeline_files(hub.repos[SD15].files, _index(hub))) == run.stdout.split()


@dataclasses.dataclass(frozen=True)
class _LaterPreset(PRESETS[PRESET].__class__):
    """A preset kind added later with fields of its own: an extra encoder folder, an extra file."""

    id_encoder: str = "owner/eva-clip/vision"
    extra_files: tuple = (HubFile("owner/pulid", "pulid_v1.1.safetensors"),)


def test_needs_are_read_from_any_preset_fields():
    preset = _LaterPreset(**{f.name: getattr(PRESETS[PRESET], f.name) for f in dataclasses.fields(PRESETS[PRESET])})
    needs, packs = downloads.needs_of(preset, with_style=False)
    kinds = {(n.repo, n.kind, n.path) for n in needs}
    assert {(SD15, "pipeline", ""), ("h94/IP-Adapter-FaceID", "file", "ip-adapter-faceid-plusv2_sd15.bin"),
            ("h94/IP-Adapter", "folder", "models/image_encoder"), ("owner/eva-clip", "folder", "vision"),
            ("owner/pulid", "file", "pulid_v1.1.safetensors")} == kinds
    assert [p.name for p in packs] == ["buffalo_l"]
    with_style = {(n.repo, n.path) for n in downloads.needs_of(preset)[0]}
    assert ("h94/IP-Adapter", "models/ip-adapter_sd15.safetensors") in with_style
    assert not downloads.needs_of(PRESETS["plus-face-sd15"])[1]  # no face recogniser, no insightface pack
    # the tiny decoder of each base, none for FLUX (the CLI refuses --decoder tiny there)
    for name, repo in (("faceid-sd15", "madebyollin/taesd"), ("pulid-sdxl", "madebyollin/taesdxl"),
                       ("pulid-flux-schnell", None)):
        tiny = {n.repo for n in downloads.needs_of(PRESETS[name], tiny_decoder=True)[0]} - \
            {n.repo for n in downloads.needs_of(PRESETS[name])[0]}
        assert tiny == ({repo} if repo else set()), name


def test_the_pulid_and_flux_presets_need_their_unet_encoder_files_and_antelopev2():
    from facestudio.presets import preset_needs

    needs, packs = downloads.needs_of(PRESETS["pulid-sdxl"], with_style=False)
    paths = {(n.repo, n.path): n.what for n in needs}
    assert paths[("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_unet.safetensors")] == "unet"
    assert paths[("QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt")] == "EVA-CLIP image encoder"
    assert paths[("guozinan/PuLID", "pulid_v1.bin")] == "adapter" and [p.name for p in packs] == ["antelopev2", "bisenet"]
    # a preset without a style adapter needs no style encoder, style image or not
    assert not any("style" in n.what for n in downloads.needs_of(PRESETS["pulid-sdxl"], with_style=True)[0])
    flux = {(n.repo, n.kind) for n in downloads.needs_of(PRESETS["pulid-flux-schnell"])[0]}
    assert ("black-forest-labs/FLUX.1-schnell", "pipeline") in flux and ("QuanSun/EVA-CLIP", "file") in flux
    # a named antelopev2 file replaces the pack; a speed model asked for adds its file, its local file does not
    named = preset_needs(PRESETS["pulid-sdxl"], local_files={"antelopev2": "/x/glintr100.onnx"})[1]
    assert [p.name for p in named] == ["bisenet"]
    lcm = ("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors")
    asked = {(n.repo, n.path) for n in preset_needs(PRESETS[PRESET], speed="lcm-sd15")[0]}
    local = {(n.repo, n.path) for n in preset_needs(PRESETS[PRESET], speed="lcm-sd15", speed_weights="/x.safetensors")[0]}
    assert lcm in asked and lcm not in local


def test_weights_choice_leaves_variants_out():
    listing = ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
               "unet/diffusion_pytorch_model.safetensors.index.json", "unet/diffusion_pytorch_model.non_ema.safetensors"]
    assert sorted(downloads.model_folder_files(listing, "unet")) == [
        "unet/config.json", "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json"]
    assert downloads.model_folder_files(["enc/config.json", "enc/pytorch_model.bin"], "enc") == [
        "enc/config.json", "enc/pytorch_model.bin"]
