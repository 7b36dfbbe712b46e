"""Speed (few-step) LoRAs beside a FaceID checkpoint's LoRA: loaded through diffusers in the public layouts, each
at its own weight, changing the output, and gone without a trace when unloaded.

The LoRA files are random weights for the tiny UNet in the two layouts the published files use (kohya's
`lora_unet_*` names with `alpha`, as LCM-LoRA and Lightning ship; diffusers' PEFT `unet.*.lora_A/B`), saved
under the published file names, and also in a hub cache laid out as huggingface_hub writes it. Nothing is
downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from facestudio.errors import FaceStudioError
from facestudio.guidance import public_identity as pid
from facestudio.guidance import public_layouts as layouts
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput
from facestudio.request import GenerationSettings
from facestudio.sampling.speed import SPEED_ADAPTER, SPEED_MODELS, load_speed_model, unload_speed_model

pytest.importorskip("peft", minversion="0.17")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")

MODEL = SPEED_MODELS["hyper-sd15-4step"]
SIZE = dict(height=64, width=64)


def speed_lora(unet, layout: str, seed: int = 0, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random LoRA over every linear layer of the UNet's transformer blocks, in `layout` ("kohya"/"diffusers")."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, nn.Linear) and ".transformer_blocks." in name):
            continue
        down = 0.3 * torch.randn(rank, module.in_features, generator=generator)
        up = 0.3 * torch.randn(module.out_features, rank, generator=generator)
        if layout == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(float(rank))})
        else:
            state.update({f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up})
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """`layout -> folder` holding the speed LoRA under its published name, and a FaceID checkpoint folder."""
    unet = tiny_components()["unet"]
    folders = {}
    for layout in ("kohya", "diffusers"):
        folders[layout] = tmp_path_factory.mktemp(layout)
        save_file(speed_lora(unet, layout), str(folders[layout] / MODEL.file.filename))
    faceid = tmp_path_factory.mktemp("faceid")
    generator = torch.Generator().manual_seed(7)
    save_file({k: 0.2 * torch.randn(shape, generator=generator)
               for k, shape in layouts.faceid(unet, lora_rank=4).items()}, str(faceid / "faceid.safetensors"))
    folders["faceid"] = faceid
    return folders


def faceid_pipe(files, analyzer) -> FaceStudioPipeline:
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    config = pid.PublicIdentityConfig(projection="faceid", recognizer="arcface", cross_attention_dim=64, lora_rank=4)
    pipe.load_public_adapters((str(files["faceid"]), "faceid.safetensors", None), identity_config=config,
                              face_analyzer=analyzer)
    return pipe


@pytest.fixture(scope="module")
def person(files, arcface_analyzer, faces_dir):
    pipe = faceid_pipe(files, arcface_analyzer)
    return pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",), name="obama")], None)[0]


def unet_out(pipe) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    sample, text = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 7, 64, generator=generator)
    tokens = [torch.randn(1, 1, 4, 64, generator=generator)]
    with torch.no_grad():
        return pipe.unet(sample, 500, text, added_cond_kwargs={"image_embeds": tokens}).sample


def image(pipe, person, **settings) -> np.ndarray:
    return pipe(GenerationSettings("a portrait", identities=(IdentityInput(identity=person),), seed=0,
                                   output_type="np", **SIZE, **settings)).images


def active(pipe) -> set[str]:
    return set(pipe.get_active_adapters())


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_a_speed_lora_works_beside_the_faceid_lora_and_unloads_bit_exactly(files, arcface_analyzer, person,
                                                                           layout):
    pipe = faceid_pipe(files, arcface_analyzer)
    assert active(pipe) == {"faceid_0"}
    before_unet, before_image = unet_out(pipe), image(pipe, person, num_inference_steps=2)
    load_speed_model(pipe, MODEL, weights=files[layout])
    assert active(pipe) == {"faceid_0", SPEED_ADAPTER}  # both at once, each its own weight
    with_speed = unet_out(pipe)
    assert torch.abs(with_speed - before_unet).max() > 1e-3
    assert np.abs(image(pipe, person, num_inference_steps=2) - before_image).max() > 1e-3
    # the FaceID LoRA still acts beside it: switching it off alone changes the output again
    pipe.set_adapters([SPEED_ADAPTER], adapter_weights=[1.0])
    assert torch.abs(unet_out(pipe) - with_speed).max() > 1e-4
    pipe.set_adapters(["faceid_0", SPEED_ADAPTER], adapter_weights=[1.0, 1.0])
    assert torch.equal(unet_out(pipe), with_speed)
    unload_speed_model(pipe)
    assert active(pipe) == {"faceid_0"} and pipe.speed_model is None
    assert torch.equal(unet_out(pipe), before_unet)
    assert np.array_equal(image(pipe, person, num_inference_steps=2), before_image)


def test_the_speed_weight_is_its_own(files, arcface_analyzer):
    pipe = faceid_pipe(files, arcface_analyzer)
    base = unet_out(pipe)
    load_speed_model(pipe, MODEL, weights=files["kohya"], weight=0.0)
    assert torch.equal(unet_out(pipe), base)  # weight 0: the speed LoRA adds nothing, FaceID's still at 1
    load_speed_model(pipe, MODEL, weights=files["kohya"], weight=0.5)
    half = unet_out(pipe)
    load_speed_model(pipe, MODEL, weights=files["kohya"])  # replaces the one loaded: one speed adapter
    assert sorted(n for names in pipe.get_list_adapters().values() for n in names).count(SPEED_ADAPTER) == 1
    assert torch.abs(unet_out(pipe) - half).max() > 1e-4 and torch.abs(half - base).max() > 1e-4


def test_a_call_with_the_speed_model_samples_as_it_was_made(files, arcface_analyzer, person):
    pipe = faceid_pipe(files, arcface_analyzer)
    load_speed_model(pipe, MODEL, weights=files["diffusers"])
    steps = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: steps.append((float(args[1]), args[0].shape[0])))
    try:
        out = pipe(GenerationSettings("a portrait", identities=(IdentityInput(identity=person),), seed=0,
                                      output_type="np", **SIZE, **MODEL.settings()))
    finally:
        hook.remove()
    assert [b for _, b in steps] == [1, 1, 1, 1]  # 4 steps at scale 1: 4 UNet evaluations
    assert steps[0][0] == 999  # trailing spacing starts at the last training step
    assert out.settings["speed"] == MODEL.name and out.settings["scheduler_class"] == "DDIMScheduler"


def test_speed_models_are_named_and_checked(files, arcface_analyzer):
    with pytest.raises(FaceStudioError, match="--speed 'hyper'.*hyper-sd15-4step, hyper-sd15-8step"):
        GenerationSettings("x", speed="hyper").validate("cli")
    pipe = faceid_pipe(files, arcface_analyzer)
    with pytest.raises(FaceStudioError, match="speed model 'lcm-sd15' asked for, but none is loaded"):
        pipe(GenerationSettings("x", speed="lcm-sd15", **SIZE))
    with pytest.raises(FaceStudioError, match="made for SDXL"):
        load_speed_model(pipe, "lightning-sdxl-4step", weights=files["kohya"])
    for model in SPEED_MODELS.values():
        assert model.licence and model.file.filename.endswith(".safetensors") and 1 <= model.steps <= 8


def test_a_speed_model_loads_by_name_from_the_hub_cache(tmp_path, files, arcface_analyzer):
    """The real repository id and file name, from a cache laid out as huggingface_hub writes it (offline)."""
    commit = "0" * 40
    repo = tmp_path / ("models--" + MODEL.file.repo.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / MODEL.file.filename).write_bytes(
        (files["kohya"] / MODEL.file.filename).read_bytes())
    pipe = faceid_pipe(files, arcface_analyzer)
    base = unet_out(pipe)
    load_speed_model(pipe, "hyper-sd15-4step", cache_dir=str(tmp_path), local_files_only=True)
    assert active(pipe) == {"faceid_0", SPEED_ADAPTER} and torch.abs(unet_out(pipe) - base).max() > 1e-3


def _facestudio(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "facestudio.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_the_command_line_runs_a_speed_model_with_its_settings(tmp_path, files):
    from facestudio.imaging import read_png_metadata

    done = _facestudio("generate", "--prompt", "x", "--base-model", "tiny", "--speed", "hyper-sd15-4step",
                       "--speed-weights", str(files["kohya"] / MODEL.file.filename), "--width", "64", "--height",
                       "64", "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    meta = read_png_metadata(tmp_path / "out" / "000-seed0.png")
    assert (meta["speed"], meta["steps"], meta["scheduler"], meta["text_guidance_scale"]) == \
        ("hyper-sd15-4step", 4, "ddim", 1.0)


def test_a_missing_speed_file_fails_before_any_model_loads(tmp_path):
    done = _facestudio("generate", "--prompt", "x", "--base-model", "tiny", "--speed", "lcm-sd15", "--output",
                       str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "speed model lcm-sd15" in done.stderr and "run: facestudio download lcm-sd15" in done.stderr
    done = _facestudio("generate", "--prompt", "x", "--base-model", "tiny", "--speed", "fast", "--output",
                       str(tmp_path / "out"))
    assert done.returncode == 2 and "lcm-sd15" in done.stderr and not (tmp_path / "out").exists()


def test_a_run_spec_names_a_speed_model_and_takes_its_settings(faces_dir, tmp_path):
    from facestudio.evaluation.runspec import parse_spec

    people = {"identities": {"obama": {"photos": [str(faces_dir / "obama.jpg")]}}, "prompts": ["a"],
              "base_model": "tiny", "adapter": "tiny"}
    spec = parse_spec({**people, "speed": "tcd-sd15", "speed_weights": "tcd.safetensors"}, base=tmp_path)
    assert (spec.speed, spec.scheduler, spec.steps, spec.settings[0].text_scale) == ("tcd-sd15", "tcd", 4, 1.0)
    assert spec.speed_weights == str(tmp_path / "tcd.safetensors")
    assert parse_spec({**people, "speed": "tcd-sd15", "steps": 8, "scheduler": "ddim"}).steps == 8
    with pytest.raises(FaceStudioError, match="speed 'x'.*lcm-sd15"):
        parse_spec({**people, "speed": "x"})
    with pytest.raises(FaceStudioError, match="scheduler 'y'.*unipc"):
        parse_spec({**people, "scheduler": "y"})
