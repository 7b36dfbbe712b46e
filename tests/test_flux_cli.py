"""`facestudio generate --preset pulid-flux-schnell` end to end from huggingface_hub's cache (offline), filled
with tiny checkpoints in the real repositories, file names and layouts: FLUX.1-schnell's diffusers folders
(a tiny FLUX.1 of schnell's structure), guozinan/PuLID's pulid_flux_v0.9.1.safetensors (`pulid_ca.*` and
`pulid_encoder.*` at test widths) and EVA-CLIP's .pt; BiSeNet and antelopev2 as the user's local files.
Without them, offline: one message and exit 2."""

from __future__ import annotations


import sys
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline

from facestudio.cli import main
from facestudio.guidance.kinds.pulid_flux import PuLIDFluxConfig, PuLIDFluxKind
from facestudio.imaging import read_png_metadata
from facestudio.models_flux import tiny_flux_components
from facestudio.presets import PRESETS

sys.path.insert(0, str(Path(__file__).parent / "support"))
pytestmark = pytest.mark.usefixtures("one_torch_thread")
COMMIT = "0" * 40
#: The cross-attention at test widths (`--pulid-sizes tiny`): 2 heads of 16, ID tokens 2048 wide.
TINY_CA = PuLIDFluxConfig(heads=2, head_dim=16)


def _snapshot(hub, repo: str):
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


def fill_hub(hub, folder) -> dict:
    """The cache filled (see the module docstring); returns the local files `{"antelopev2", "bisenet"}`."""
    import shutil
    from dataclasses import replace

    from pulid_tiny import tiny_pulid_files
    from safetensors.torch import save_file

    from facestudio.guidance.pulid.encoder import tiny_encoder_config
    from facestudio.guidance.pulid.idformer import build_id_encoder

    components = tiny_flux_components(guidance_embeds=False)  # schnell has no guidance embedding
    FluxPipeline(**components).save_pretrained(_snapshot(hub, "black-forest-labs/FLUX.1-schnell"))
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) * 0.1 + (len(shape) == 1)
             for k, shape in PuLIDFluxKind(TINY_CA).layout(components["transformer"]).items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        id_former = build_id_encoder(replace(tiny_encoder_config("flux-v0.9.1"), output_dim=2048))
    state.update({f"pulid_encoder.{k}": torch.randn(v.shape, generator=generator) * 0.1
                  for k, v in id_former.state_dict().items()})
    pulid = _snapshot(hub, "guozinan/PuLID")
    pulid.mkdir(parents=True, exist_ok=True)
    save_file(state, str(pulid / "pulid_flux_v0.9.1.safetensors"))
    files = tiny_pulid_files(folder, "flux-v0.9.1")
    eva = _snapshot(hub, "QuanSun/EVA-CLIP")
    eva.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["eva_clip"], eva / "EVA02_CLIP_L_336_psz14_s6B.pt")
    return {"antelopev2": files["antelopev2"], "bisenet": files["bisenet"]}


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
    assert "base model: black-forest-labs/FLUX.1-schnell" in err
    assert "adapter: guozinan/PuLID/pulid_flux_v0.9.1.safetensors" in err
    for needed in ("QuanSun/EVA-CLIP/EVA02_CLIP_L_336_psz14_s6B.pt", "glintr100.onnx", "run: facestudio download",
                   "--antelopev2-model", "parsing_bisenet.pth"):
        assert needed in err
    assert not (empty_hub.parent / "out").exists()


def test_flux_options_are_checked_before_loading(capsys):
    assert main(["generate", "--preset", "pulid-flux-schnell", "--prompt", "x", "--width", "72"]) == 2
    assert "--width 72: FLUX needs a multiple of 16" in capsys.readouterr().err
    assert main(["generate", "--base-model", "tiny", "--prompt", "x", "--quantize", "int8"]) == 2
    assert "--quantize is for the FLUX presets" in capsys.readouterr().err
    assert main(["generate", "--preset", "pulid-flux-dev", "--prompt", "x", "--start-step", "-1"]) == 2
    assert "--start-step -1: must be at least 0" in capsys.readouterr().err


@pytest.mark.parametrize("command, options, message", [
    ("generate", ["--decoder", "tiny"], "--decoder tiny is not for the FLUX presets: the tiny decoder (TAESD)"),
    ("generate", ["--tiny-decoder", "madebyollin/taesd"], "--tiny-decoder is not for the FLUX presets"),
    ("generate", ["--style", "style.jpg"], "--style is not for the FLUX presets: PuLID-FLUX has no style adapter"),
    ("generate", ["--speed", "lcm-sd15"], "--speed is not for the FLUX presets"),
    ("generate", ["--reference-start", "600"], "--reference-start is not for the FLUX presets"),
    ("generate", ["--cpu-offload", "--sequential-offload"], "choose one of --cpu-offload and --sequential-offload"),
    ("serve", ["--previews"], "--previews is not for the FLUX presets"),
    ("serve", ["--decoder", "tiny"], "--decoder tiny is not for the FLUX presets"),
])
def test_what_flux_does_not_take_is_refused_before_any_file_is_needed(empty_hub, capsys, faces_dir, command, options,
                                                                       message):
    """Each refused with one line before the missing files are even listed (FLUX.1 is 12 B parameters: after
    loading, such a mistake would cost minutes)."""
    args = [command, "--preset", "pulid-flux-schnell", *options]
    if command == "generate":
        args += ["--prompt", "x", "--output", str(empty_hub.parent / "out")]
        args = [str(faces_dir / "biden.jpg") if a == "style.jpg" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and "offline" not in err, err


def test_the_flux_pipeline_refuses_the_tiny_decoder():
    from facestudio.decoding import load_tiny_decoder
    from facestudio.errors import FaceStudioError, ModelFileError
    from facestudio.models import tiny_autoencoder
    from facestudio.pipeline_flux import FaceStudioFluxPipeline
    from facestudio.request import GenerationSettings

    pipe = FaceStudioFluxPipeline(**tiny_flux_components())
    with pytest.raises(ModelFileError, match="decodes SD 1.5 and SDXL latents"):
        load_tiny_decoder(pipe, tiny_autoencoder())
    with pytest.raises(FaceStudioError, match="decoder 'tiny'"):
        pipe(GenerationSettings("x", width=64, height=64, num_inference_steps=1, decoder="tiny"))


def test_generate_two_people_with_the_schnell_preset_from_the_hub_cache(empty_hub, tmp_path, faces_dir):
    pytest.importorskip("onnxscript", reason="the tiny antelopev2 ONNX file is exported with onnxscript")
    files = fill_hub(empty_hub, tmp_path / "files")
    out = tmp_path / "out"
    status = main(["generate", "--preset", "pulid-flux-schnell", "--pulid-sizes", "tiny", "--prompt", "two friends",
                   "--identity", str(faces_dir / "obama.jpg"), "--identity", str(faces_dir / "biden.jpg"),
                   "--region", "0,0,32,48", "--region", "32,0,64,48", "--strength", "1.0", "--strength", "0.8",
                   "--steps", "2", "--width", "64", "--height", "48", "--antelopev2-model", files["antelopev2"],
                   "--bisenet-model", files["bisenet"], "--output", str(out)])
    assert status == 0
    (image,) = out.glob("*.png")
    metadata = read_png_metadata(image)
    assert metadata["ai_generated"] and metadata["preset"] == "pulid-flux-schnell"
    assert [a["source"] for a in metadata["adapters"]] == ["guozinan/PuLID/pulid_flux_v0.9.1.safetensors"]
    assert (metadata["steps"], metadata["text_guidance_scale"], metadata["scheduler"]) == \
        (2, 1.0, "flow-match-euler")
    assert metadata["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
    assert [(p["photos"], p["region"], p["strength"]) for p in metadata["identities"]] == [
        (["obama.jpg"], [0, 0, 32, 48], 1.0), (["biden.jpg"], [32, 0, 64, 48], 0.8)]


def test_serve_preset_loads_flux_and_the_api_generates(empty_hub, tmp_path):
    """`facestudio serve --preset pulid-flux-schnell`'s loading path, then a generation over real HTTP."""
    import time

    import httpx

    from facestudio.pipeline_flux import FaceStudioFluxPipeline
    from facestudio.server import BackgroundServer, create_app

    pytest.importorskip("onnxscript", reason="the tiny antelopev2 ONNX file is exported with onnxscript")
    from facestudio.presets import load_preset_pipeline

    files = fill_hub(empty_hub, tmp_path / "files")
    # what serve's load_generation_pipeline(preset=...) calls, at the test widths
    pipe = load_preset_pipeline("pulid-flux-schnell", device="cpu", pulid_sizes="tiny", local_files=files)
    assert isinstance(pipe, FaceStudioFluxPipeline) and hasattr(pipe.transformer, "pulid_flux")
    app = create_app(pipe, tmp_path / "data", max_side=256, default_steps=2,
                     base_model="black-forest-labs/FLUX.1-schnell")
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        assert client.get("/v1/models").json()["adapters"][0]["kind"] == "identity"
        # no scale given: the preset's (1, no true CFG on FLUX), as the CLI takes it, not SD's 7.5
        job = client.post("/v1/generations", json={"prompt": "a lighthouse", "width": 64, "height": 48}).json()
        deadline = time.monotonic() + 60
        while (status := client.get(f"/v1/generations/{job['id']}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status["state"] == "done", status
        from facestudio.imaging import read_png_metadata

        png = client.get(status["images"][0]["url"]).content
        (tmp_path / "0.png").write_bytes(png)
        written = read_png_metadata(tmp_path / "0.png")
        assert (written["text_guidance_scale"], written["steps"]) == (1.0, 2)
