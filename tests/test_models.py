"""Base models: the tiny test pipeline, SD 1.5's UNet architecture, loading from folders and the hub, devices.

Nothing here downloads: the hub is only asked with `local_files_only=True` or `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pytest
import torch

from facestudio.errors import FaceStudioError, ModelFileError
from facestudio.models import (
    SD15_UNET_PARAMETERS,
    choose_device,
    choose_dtype,
    enable_memory_savers,
    load_base_pipeline,
    sd15_unet_config,
    tiny_components,
)

PROMPT = "a photo"
MISSING_HUB_ID = "facestudio-tests/no-such-model-3f9c1a7e"


def _generate(pipe, seed: int) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=2, height=64, width=64,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


@pytest.fixture(scope="module")
def tiny_pipe():
    pipe = load_base_pipeline("tiny", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_image(tiny_pipe) -> np.ndarray:
    return _generate(tiny_pipe, seed=0)


@pytest.fixture(scope="module")
def saved_tiny(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    tiny_pipe.save_pretrained(folder)
    return folder


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- tiny pipeline --------------------------------------------------------------------------------


def test_tiny_pipeline_generates_finite_image(tiny_pipe, tiny_image):
    assert tiny_pipe.vae_scale_factor == 8
    assert tiny_image.shape == (1, 64, 64, 3)
    assert np.isfinite(tiny_image).all()
    assert tiny_image.std() > 0  # not a constant image


def test_tiny_pipeline_same_seed_same_image_other_seed_other_image(tiny_pipe, tiny_image):
    np.testing.assert_array_equal(_generate(tiny_pipe, seed=0), tiny_image)
    assert np.abs(_generate(tiny_pipe, seed=1) - tiny_image).max() > 1e-3


def test_tiny_pipeline_uses_euler_ancestral_without_safety_checker(tiny_pipe):
    assert type(tiny_pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert tiny_pipe.safety_checker is None


def test_tiny_unet_cross_attends_text_at_two_resolutions():
    unet = tiny_components()["unet"]
    cross = {name: m for name, m in unet.attn_processors.items() if name.endswith("attn2.processor")}
    assert len(cross) == 7  # 2 down, 1 mid, 4 up (layers_per_block + 1 per up block)
    assert unet.config.cross_attention_dim == 64
    # Record the token count each cross-attention layer sees on an 8x8 latent (64x64 image).
    seen = set()
    hooks = [m.register_forward_hook(lambda _m, args, _out: seen.add(args[0].shape[1]))
             for name, m in unet.named_modules() if name.endswith("attn2")]
    with torch.no_grad():
        out = unet(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=torch.zeros(1, 77, 64)).sample
    for hook in hooks:
        hook.remove()
    assert out.shape == (1, 4, 8, 8)
    assert seen == {64, 16}  # 8x8 and 4x4 latents


# --- tiny components ------------------------------------------------------------------------------


def test_tiny_components_are_deterministic_per_seed():
    first, again, other = tiny_components(3), tiny_components(3), tiny_components(4)
    for key in ("unet", "vae", "text_encoder"):
        a, b, c = _state(first[key]), _state(again[key]), _state(other[key])
        assert all(torch.equal(a[k], b[k]) for k in a), key
        assert any(not torch.equal(a[k], c[k]) for k in a), key


def test_tiny_components_leave_global_rng_alone():
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    tiny_components(0)
    np.testing.assert_array_equal(torch.rand(4).numpy(), expected.numpy())


def test_tiny_text_encoder_fits_tokenizer():
    parts = tiny_components()
    config = parts["text_encoder"].config
    assert config.vocab_size >= len(parts["tokenizer"])
    assert config.hidden_size == parts["unet"].config.cross_attention_dim == 64
    assert config.max_position_embeddings == 77


def test_tiny_tokenizer_round_trip():
    tokenizer = tiny_components()["tokenizer"]
    ids = tokenizer("a photo of a person", padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids
    assert tokenizer.model_max_length == 77
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    assert max(ids) < len(tokenizer)
    end = ids.index(tokenizer.eos_token_id)
    assert end > 5 and all(i == tokenizer.pad_token_id for i in ids[end:])
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a person"


# --- SD 1.5 UNet ----------------------------------------------------------------------------------


def test_sd15_unet_has_sd15_parameter_count():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():  # meta tensors: counts parameters without allocating 3.4 GB
        unet = UNet2DConditionModel(**sd15_unet_config())
    assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMETERS == 859_520_964


# --- loading --------------------------------------------------------------------------------------


def test_load_from_saved_folder_gives_same_image(saved_tiny, tiny_image):
    pipe = load_base_pipeline(str(saved_tiny), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    np.testing.assert_array_equal(_generate(pipe, seed=0), tiny_image)


def test_folder_without_model_index_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelFileError, match="model_index.json") as info:
        load_base_pipeline(str(tmp_path), device="cpu")
    assert str(tmp_path) in str(info.value)


def test_folder_missing_a_component_names_it(saved_tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelFileError, match=r"\['unet'\]") as info:
        load_base_pipeline(broken, device="cpu")
    assert str(broken) in str(info.value)


def test_folder_with_damaged_weights_is_a_model_file_error(saved_tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    for weights in (broken / "vae").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="could not be loaded"):
        load_base_pipeline(broken, device="cpu")


@pytest.mark.parametrize("name", ["./nope", "~/facestudio-nope", "/no/such/facestudio/folder", "a/b/c"])
def test_missing_path_is_no_such_folder_not_a_hub_lookup(name, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be asked about a path")

    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", no_hub)
    with pytest.raises(ModelFileError, match="no such folder"):
        load_base_pipeline(name, device="cpu")


def test_unknown_hub_id_offline_fails_fast(caplog):
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="facestudio.models"):
        with pytest.raises(ModelFileError, match=f"unknown base model '{MISSING_HUB_ID}'") as info:
            load_base_pipeline(MISSING_HUB_ID, device="cpu", local_files_only=True)
    assert time.perf_counter() - start < 5
    assert "local folder" in str(info.value) and "connection" in str(info.value)
    assert MISSING_HUB_ID in caplog.text  # says what it looks up before it does


def test_hf_hub_offline_env_means_local_files_only(monkeypatch):
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        return original(*args, **kwargs)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", spy)
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match="unknown base model"):
        load_base_pipeline(MISSING_HUB_ID, device="cpu")
    assert calls == [True]
    assert time.perf_counter() - start < 5


# --- devices and memory savers --------------------------------------------------------------------


def test_choose_dtype():
    assert choose_dtype("cpu") == torch.float32
    assert choose_dtype(torch.device("cpu")) == torch.float32
    assert choose_dtype("mps") == torch.float32
    assert choose_dtype("cuda") == torch.float16


def test_choose_device():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device().type in {"cuda", "mps", "cpu"}
    with pytest.raises(FaceStudioError, match="unknown device"):
        choose_device("gpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_is_refused():
    with pytest.raises(FaceStudioError, match="'cuda' is not available"):
        choose_device("cuda")


def test_memory_savers(caplog):
    pipe = load_base_pipeline("tiny", device="cpu")
    with caplog.at_level(logging.INFO, logger="facestudio.models"):
        assert enable_memory_savers(pipe, cpu_offload=not torch.cuda.is_available(), vae_tiling=True) is pipe
    assert pipe.vae.use_tiling
    if not torch.cuda.is_available():
        assert "offload skipped" in caplog.text
