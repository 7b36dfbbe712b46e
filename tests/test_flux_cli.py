"""`facestudio generate --preset pulid-flux-schnell` end to end from huggingface_hub's cache (offline), filled
with tiny checkpoints in the real repositories, file names and layouts: FLUX.1-schnell's diffusers folders
(a tiny FLUX.1 of schnell's structure) and guozinan/PuLID's pulid_flux_v0.9.1.safetensors (PuLID's published
cross-attention sizes, for the tiny transformer's width). Without them, offline: one message and exit 2."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from facestudio.cli import main
from facestudio.guidance.kinds.pulid_flux import PuLIDFluxConfig, PuLIDFluxKind
from facestudio.imaging import read_png_metadata
from facestudio.models_flux import tiny_flux_components
from facestudio.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COMMIT = "0" * 40


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty model hub cache, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def _snapshot(hub, repo: str):
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


def fill_hub(hub) -> None:
    from safetensors.torch import save_file

    components = tiny_flux_components(guidance_embeds=False)  # schnell has no guidance embedding
    FluxPipeline(**components).save_pretrained(_snapshot(hub, "black-forest-labs/FLUX.1-schnell"))
    layout = PuLIDFluxKind(PuLIDFluxConfig()).layout(components["transformer"])
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) * 0.02 + (len(shape) == 1)).half()
             for k, shape in layout.items()}
    state["pulid_encoder.id_embedding_mapping.0.weight"] = torch.zeros(8, 8, dtype=torch.float16)
    folder = _snapshot(hub, "guozinan/PuLID")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "pulid_flux_v0.9.1.safetensors"))


def test_flux_presets_and_their_licences():
    dev, schnell = PRESETS["pulid-flux-dev"], PRESETS["pulid-flux-schnell"]
    assert dev.flux and schnell.flux and dev.adapter == schnell.adapter
    assert dev.adapter.filename == "pulid_flux_v0.9.1.safetensors" and dev.adapter.repo == "guozinan/PuLID"
    assert dev.non_commercial and "Non-Commercial" in dev.licence
    assert not schnell.non_commercial and "Apache-2.0" in schnell.licence and schnell.steps == 4
    assert "antelopev2" in schnell.licence  # the face models PuLID's encoder reads are non-commercial
    assert dev.text_guidance_scale == 1.0 and dev.distilled_guidance_scale == 4.0


def test_offline_without_the_files_one_message_and_exit_2(empty_hub, capsys):
    status = main(["generate", "--preset", "pulid-flux-schnell", "--prompt", "an astronaut",
                   "--output", str(empty_hub.parent / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "hf download black-forest-labs/FLUX.1-schnell" in err
    assert "hf download guozinan/PuLID pulid_flux_v0.9.1.safetensors" in err
    assert not (empty_hub.parent / "out").exists()


def test_flux_options_are_checked_before_loading(capsys):
    assert main(["generate", "--preset", "pulid-flux-schnell", "--prompt", "x", "--width", "72"]) == 2
    assert "--width 72: FLUX needs a multiple of 16" in capsys.readouterr().err
    assert main(["generate", "--base-model", "tiny", "--prompt", "x", "--quantize", "int8"]) == 2
    assert "--quantize is for the FLUX presets" in capsys.readouterr().err
    assert main(["generate", "--preset", "pulid-flux-schnell", "--prompt", "x", "--identity", "me.jpg"]) == 2
    assert "not wired into the FLUX presets yet" in capsys.readouterr().err
    assert main(["generate", "--preset", "pulid-flux-dev", "--prompt", "x", "--start-step", "-1"]) == 2
    assert "--start-step -1: must be at least 0" in capsys.readouterr().err


def test_generate_with_the_schnell_preset_from_the_hub_cache(empty_hub, tmp_path):
    fill_hub(empty_hub)
    out = tmp_path / "out"
    status = main(["generate", "--preset", "pulid-flux-schnell", "--prompt", "an astronaut", "--steps", "2",
                   "--width", "64", "--height", "48", "--output", str(out)])
    assert status == 0
    (image,) = out.glob("*.png")
    assert image.stat().st_size > 0
    settings = str(read_png_metadata(image))
    assert "pulid-flux-schnell" in settings and "black-forest-labs/FLUX.1-schnell" in settings


def test_serve_preset_loads_flux_and_the_api_generates(empty_hub, tmp_path):
    """`facestudio serve --preset pulid-flux-schnell`'s loading path, then a generation over real HTTP."""
    import time

    import httpx

    from facestudio.loading import load_generation_pipeline
    from facestudio.pipeline_flux import FaceStudioFluxPipeline
    from facestudio.server import BackgroundServer, create_app

    fill_hub(empty_hub)
    pipe = load_generation_pipeline(None, preset="pulid-flux-schnell", device="cpu")
    assert isinstance(pipe, FaceStudioFluxPipeline) and hasattr(pipe.transformer, "pulid_flux")
    app = create_app(pipe, tmp_path / "data", max_side=256, default_steps=2,
                     base_model="black-forest-labs/FLUX.1-schnell")
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        assert client.get("/v1/models").json()["adapters"][0]["kind"] == "identity"
        job = client.post("/v1/generations", json={"prompt": "a lighthouse", "width": 64, "height": 48,
                                                    "text_guidance_scale": 1.0}).json()
        deadline = time.monotonic() + 60
        while (status := client.get(f"/v1/generations/{job['id']}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status["state"] == "done", status
