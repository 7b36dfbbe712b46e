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
from support.hub_server import INSIGHTFACE_RELEASE_PATH, facestudio_hub, insightface_sha256_env

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


def test_download_then_generate_from_an_empty_cache(env, hub, faces_dir, tmp_path):
    first = facestudio(env, "download", PRESET, *ACCEPT)
    assert first.returncode == 0, first.stderr
    err = first.stderr
    # sizes and licences before, a progress bar per file, the insightface pack from its release address
    assert "unet/diffusion_pytorch_model.safetensors" in err and " kB" in err and "to download" in err
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

    out = tmp_path / "out"
    run = facestudio(env, "generate", "--preset", PRESET, "--prompt", "an astronaut", "--identity",
                     str(faces_dir / "obama.jpg"), "--steps", "2", "--width", "64", "--height", "64",
                     "--output", str(out))
    assert run.returncode == 0, run.stderr
    (image,) = out.glob("*.png")
    assert hub.downloads() == []  # generation fetched nothing more

    offline = facestudio({**env, "HF_HUB_OFFLINE": "1"}, "download", PRESET)
    assert offline.returncode == 0 and "everything is already here" in offline.stderr, offline.stderr


def _index(hub) -> dict:
    import json

    return json.loads(hub.repos[SD15].files["model_index.json"])
