"""Layouts of the public IP-Adapter checkpoints: published sizes and counts, and loading through diffusers.

The numbers are the published files' (ADAPTER-FORMATS.md §2, §7.1). SD 1.5 and SDXL UNets are built on the
meta device, so no weights are allocated; the diffusers checks use the tiny test UNet. Nothing is downloaded.
"""

from __future__ import annotations

import accelerate
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import (
    ImageProjection,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
)
from safetensors.torch import save_file

from facestudio.guidance import public_layouts as layouts
from facestudio.guidance.layout import cross_attention_layers
from facestudio.models import sd15_unet_config, tiny_components

# SD 1.5 hidden size of processor i (attn1 at even i, attn2 at odd i), ADAPTER-FORMATS.md §1.3.
SD15_HIDDEN = [320] * 4 + [640] * 4 + [1280] * 4 + [1280] * 6 + [640] * 6 + [320] * 6 + [1280] * 2

# stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json`, the parts that shape the attention layers.
SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def _part(layout: dict, prefix: str) -> dict:
    return {k.removeprefix(f"{prefix}."): v for k, v in layout.items() if k.startswith(f"{prefix}.")}


def _empty_unet(config: dict) -> UNet2DConditionModel:
    with accelerate.init_empty_weights():  # meta tensors: SD 1.5's 860 M parameters take no memory
        return UNet2DConditionModel(**config)


@pytest.fixture(scope="module")
def sd15() -> UNet2DConditionModel:
    return _empty_unet(sd15_unet_config())


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DConditionModel:
    return tiny_components()["unet"]


# --- published sizes --------------------------------------------------------------------------------------------
# A safetensors file is an 8-byte header length, a JSON header padded with spaces to a multiple of 8, then the
# raw tensor bytes. The header names every tensor with its dtype, shape and data offsets, and save_file lays the
# tensors out sorted by dtype then name whatever the dict order, so the offsets, and with them the header's
# length, follow from the key names and shapes alone. Zeros therefore give the published file's size exactly,
# byte for byte, as long as no metadata is written (the published files have none; `{"format": "pt"}` would
# add 32 bytes).


def test_plus_face_sd15_fp16_file_is_published_size(sd15, tmp_path):
    path = tmp_path / "ip-adapter-plus-face_sd15.safetensors"
    save_file(layouts.zeros_state_dict(layouts.plus_face(sd15)), str(path))
    assert path.stat().st_size == 98_183_288


def test_full_face_sd15_fp16_file_is_published_size_in_any_key_order(sd15, tmp_path):
    state = layouts.zeros_state_dict(layouts.full_face(sd15))
    path = tmp_path / "ip-adapter-full-face_sd15.safetensors"
    save_file(state, str(path))
    assert path.stat().st_size == 43_592_352
    reversed_path = tmp_path / "reversed.safetensors"
    save_file(dict(reversed(state.items())), str(reversed_path))
    assert reversed_path.read_bytes() == path.read_bytes()


def test_zeros_state_dict_has_layout_keys_shapes_and_dtype(sd15):
    layout = layouts.base(sd15)
    state = layouts.zeros_state_dict(layout, dtype=torch.bfloat16)
    assert list(state) == list(layout)
    assert all(tuple(t.shape) == layout[k] and t.dtype == torch.bfloat16 and not t.any() for k, t in state.items())
    assert layouts.parameter_count(layout) * 2 == 44_639_232  # ip-adapter_sd15: data bytes at fp16 (§2.4)


# --- published parameter counts ---------------------------------------------------------------------------------


def test_faceid_sd15_counts(sd15):
    layout = layouts.faceid(sd15)
    image_proj, ip_adapter = _part(layout, "image_proj"), _part(layout, "ip_adapter")
    assert layouts.parameter_count(layout) == 48_354_816
    assert len(image_proj) == 6
    assert layouts.parameter_count(image_proj) == 3_675_648
    ip_keys = [k for k in ip_adapter if k.endswith(("to_k_ip.weight", "to_v_ip.weight"))]
    lora_keys = [k for k in ip_adapter if "_lora." in k]
    assert (len(ip_adapter), len(ip_keys), len(lora_keys)) == (288, 32, 256)
    assert layouts.parameter_count({k: ip_adapter[k] for k in ip_keys}) == 19_169_280
    assert layouts.parameter_count({k: ip_adapter[k] for k in lora_keys}) == 25_509_888


def test_faceid_plusv2_sd15_counts(sd15):
    layout = layouts.faceid_plus(sd15)
    image_proj = _part(layout, "image_proj")
    assert layouts.parameter_count(layout) == 78_260_736
    assert len(image_proj) == 56
    assert layouts.parameter_count(image_proj) == 33_581_568
    assert _part(layout, "ip_adapter") == _part(layouts.faceid(sd15), "ip_adapter")  # §2.2: identical to FaceID


def test_faceid_lora_uses_full_processor_index_with_each_layers_width(sd15):
    ip_adapter = _part(layouts.faceid(sd15), "ip_adapter")
    for i, hidden in enumerate(SD15_HIDDEN):
        kv_in = hidden if i % 2 == 0 else 768  # attn1 reads the image features, attn2 the 768-wide text
        assert ip_adapter[f"{i}.to_q_lora.down.weight"] == (128, hidden)
        assert ip_adapter[f"{i}.to_k_lora.down.weight"] == (128, kv_in)
        assert ip_adapter[f"{i}.to_v_lora.up.weight"] == (hidden, 128)
        assert ip_adapter[f"{i}.to_out_lora.up.weight"] == (hidden, 128)
        assert (f"{i}.to_k_ip.weight" in ip_adapter) == (i % 2 == 1)
        if i % 2:
            assert ip_adapter[f"{i}.to_v_ip.weight"] == (hidden, 768)
    assert "32.to_q_lora.down.weight" not in ip_adapter


def test_sdxl_faceid_plusv2_counts():
    sdxl = _empty_unet(SDXL_UNET_CONFIG)
    assert len(sdxl.attn_processors) == 140
    layout = layouts.faceid_plus(sdxl)
    assert layouts.parameter_count(layout) == 743_707_648
    assert layouts.parameter_count({k: s for k, s in layout.items() if "_lora." in k}) == 185_794_560
    assert layout["image_proj.perceiver_resampler.layers.0.0.to_q.weight"] == (2048, 2048)  # 32 heads of 64


# --- diffusers accepts the layouts --------------------------------------------------------------------------------

# layout function, diffusers projection class, projection input (an image embedding's shape per image)
KINDS = {
    "faceid": (layouts.faceid, IPAdapterFaceIDImageProjection, (512,)),
    "faceid_plus": (layouts.faceid_plus, IPAdapterFaceIDPlusImageProjection, (512,)),
    "plus_face": (layouts.plus_face, IPAdapterPlusImageProjection, (257, 1280)),
    "full_face": (layouts.full_face, IPAdapterFullImageProjection, (257, 1280)),
    "base": (layouts.base, ImageProjection, (1024,)),
}
TOKENS = {"faceid": 4, "faceid_plus": 4, "plus_face": 16, "full_face": 257, "base": 4}


def _random_state(layout: dict, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    flat = {k: torch.randn(shape, generator=generator) for k, shape in layout.items()}
    return {"image_proj": _part(flat, "image_proj"), "ip_adapter": _part(flat, "ip_adapter")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_diffusers_loads_image_proj_strictly(tiny_unet, kind):
    make_layout, projection_class, embed_shape = KINDS[kind]
    state = _random_state(make_layout(tiny_unet))
    # low_cpu_mem_usage=False: diffusers then calls load_state_dict(strict=True); the meta-device path it uses
    # otherwise skips unknown keys and leaves missing ones unset.
    projection = tiny_unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"], low_cpu_mem_usage=False)
    assert type(projection) is projection_class
    assert layouts.parameter_count({k: tuple(v.shape) for k, v in projection.state_dict().items()}) == \
        layouts.parameter_count({k: tuple(v.shape) for k, v in state["image_proj"].items()})
    if kind == "faceid_plus":
        projection.clip_embeds = torch.randn(2, 1, 257, 1280)
    with torch.no_grad():
        tokens = projection(torch.randn(2, *embed_shape))
    assert tokens.shape[-2:] == (TOKENS[kind], tiny_unet.config.cross_attention_dim)


@pytest.mark.parametrize("kind", list(KINDS))
def test_diffusers_reads_every_ip_adapter_key(tiny_unet, kind):
    state = _random_state(KINDS[kind][0](tiny_unet))
    processors = tiny_unet._convert_ip_adapter_attn_to_diffusers([state], low_cpu_mem_usage=False)
    read = set()
    for layer in cross_attention_layers(tiny_unet):
        processor = processors[layer.name]
        assert processor.num_tokens == [TOKENS[kind]]
        for name in ("to_k_ip", "to_v_ip"):
            key = f"{layer.key}.{name}.weight"
            assert torch.equal(getattr(processor, name)[0].weight, state["ip_adapter"][key])
            read.add(key)
    # FaceID's LoRA goes to PEFT (not installed here); diffusers' extraction step needs no PEFT and must find
    # every LoRA key, each pair multiplying out to the shape of the Linear it adapts.
    loras = tiny_unet._load_ip_adapter_loras([state]).get(0, {})
    for key, value in loras.items():
        if ".down." in key:
            up = loras[key.replace(".down.", ".up.")]
            target = tiny_unet.get_submodule(key.removeprefix("unet.").replace(".processor.", ".")
                                             .split("_lora.")[0].replace(".to_out", ".to_out.0"))
            assert (up @ value).shape == target.weight.shape
    assert len(read) + len(loras) == len(state["ip_adapter"])
    assert len(loras) == (8 * len(tiny_unet.attn_processors) if kind.startswith("faceid") else 0)


def test_diffusers_rejects_a_wrong_shape(tiny_unet):
    state = _random_state(layouts.plus_face(tiny_unet))
    state["image_proj"]["proj_out.weight"] = state["image_proj"]["proj_out.weight"][:, :-1]
    with pytest.raises(RuntimeError, match="size mismatch"):
        tiny_unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"], low_cpu_mem_usage=False)
