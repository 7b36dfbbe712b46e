"""Loading public IP-Adapters through `public_loading`: the three diffusers pitfalls, parity, and an oracle.

Each pitfall has a `test_stock_*` test that shows diffusers 0.42.1's own behaviour (so the fixed test below it
would fail on stock diffusers) and a test of the wrapper. If a `test_stock_*` test starts failing, diffusers
has changed that behaviour and the workaround can be reconsidered. Checkpoints are random, in the public
FaceID layout of the tiny test UNet (`public_layouts.faceid`), with non-zero LoRA up-weights so that the
LoRA changes the output. Nothing is downloaded.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from facestudio.errors import ModelFileError
from facestudio.guidance import public_layouts as layouts
from facestudio.guidance.layout import cross_attention_layers
from facestudio.guidance.public_loading import load_public_adapters, unload_public_adapters
from facestudio.models import tiny_components

pytest.importorskip("peft", minversion="0.17")
# diffusers itself adds a second PEFT adapter to the UNet for each FaceID LoRA or user LoRA
pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_components())


def _faceid(unet, seed: int, lora_rank: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    """A random FaceID checkpoint (nested dict) for `unet`."""
    generator = torch.Generator().manual_seed(seed)
    flat = {k: 0.1 * torch.randn(shape, generator=generator)
            for k, shape in layouts.faceid(unet, lora_rank=lora_rank).items()}
    return {part: {k.removeprefix(f"{part}."): v for k, v in flat.items() if k.startswith(f"{part}.")}
            for part in ("image_proj", "ip_adapter")}


def _flat(state: dict) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part, tensors in state.items() for k, v in tensors.items()}


def _user_lora(pipe, weight: float = 0.5) -> None:
    """A small random LoRA "mine" on some of the UNet's attention projections, active at `weight`."""
    generator = torch.Generator().manual_seed(99)
    state = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v", "attn1.to_out.0")):
            state[f"unet.{name}.lora_A.weight"] = 0.1 * torch.randn(2, module.in_features, generator=generator)
            state[f"unet.{name}.lora_B.weight"] = 0.1 * torch.randn(module.out_features, 2, generator=generator)
    pipe.load_lora_weights(state, adapter_name="mine")
    pipe.set_adapters(["mine"], adapter_weights=[weight])


def _stock_load(pipe, states: list[dict]) -> None:
    none = [None] * len(states)
    pipe.load_ip_adapter(states, subfolder=none, weight_name=none, image_encoder_folder=None,
                         low_cpu_mem_usage=False)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(1, 4, 8, 8, generator=generator),
            "text": torch.randn(1, 7, 64, generator=generator),
            "face": torch.randn(1, 1, 512, generator=generator),
            "faces": torch.randn(1, 2, 512, generator=generator)}


def _out(pipe, inputs, embeds=None, **cross_attention_kwargs) -> torch.Tensor:
    """One UNet call; `embeds` is the list of per-adapter identity embeddings (None: no IP-Adapter)."""
    added = None if embeds is None else {"image_embeds": embeds}
    with torch.no_grad():
        return pipe.unet(inputs["sample"], 10, encoder_hidden_states=inputs["text"], added_cond_kwargs=added,
                         cross_attention_kwargs=cross_attention_kwargs or None).sample


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-3


# --- 1. a FaceID LoRA left behind by unload ------------------------------------------------------------------


def test_stock_unload_keeps_the_old_faceid_lora(inputs):
    pipe, fresh = _pipe(), _pipe()
    a, b = _faceid(pipe.unet, 1), _faceid(pipe.unet, 2)
    _stock_load(fresh, [b])
    _stock_load(pipe, [a])
    pipe.unload_ip_adapter()
    assert pipe.get_list_adapters()["unet"] == ["faceid_0"]
    _stock_load(pipe, [b])
    assert _differs(_out(pipe, inputs, [inputs["face"]]), _out(fresh, inputs, [inputs["face"]]))


@pytest.mark.parametrize("unload", [True, False], ids=["unload-then-load", "load-over"])
def test_second_faceid_checkpoint_runs_with_its_own_lora(inputs, unload):
    pipe, fresh = _pipe(), _pipe()
    a, b = _faceid(pipe.unet, 1), _faceid(pipe.unet, 2)
    _stock_load(fresh, [b])
    load_public_adapters(pipe, a)
    if unload:
        unload_public_adapters(pipe)
        assert pipe.get_list_adapters().get("unet", []) == []
    assert load_public_adapters(pipe, b) == ["faceid_0"]
    torch.testing.assert_close(_out(pipe, inputs, [inputs["face"]]), _out(fresh, inputs, [inputs["face"]]),
                               atol=ATOL, rtol=0)


def test_stock_unload_leaves_user_lora_switched_off():
    pipe = _pipe()
    _user_lora(pipe)
    _stock_load(pipe, [_faceid(pipe.unet, 1)])
    pipe.unload_ip_adapter()
    assert pipe.get_active_adapters() == ["faceid_0"]


def test_unload_gives_back_the_pipeline_with_the_user_lora(inputs):
    pipe = _pipe()
    _user_lora(pipe, weight=0.5)
    before = _out(pipe, inputs)
    load_public_adapters(pipe, [_faceid(pipe.unet, 1), _faceid(pipe.unet, 2)])
    unload_public_adapters(pipe)
    assert pipe.get_list_adapters()["unet"] == ["mine"]
    assert pipe.get_active_adapters() == ["mine"]
    torch.testing.assert_close(_out(pipe, inputs), before, atol=ATOL, rtol=0)


# --- 2. two FaceID LoRAs and the user's LoRA ---------------------------------------------------------------


def test_stock_two_faceid_adapters_leave_only_the_last_lora_active():
    pipe = _pipe()
    _user_lora(pipe)
    _stock_load(pipe, [_faceid(pipe.unet, 1), _faceid(pipe.unet, 2)])
    assert pipe.get_active_adapters() == ["faceid_1"]


def test_two_faceid_adapters_and_the_user_lora_are_all_active(inputs):
    pipe = _pipe()
    _user_lora(pipe, weight=0.5)
    names = load_public_adapters(pipe, [_faceid(pipe.unet, 1), _faceid(pipe.unet, 2)])
    assert names == ["faceid_0", "faceid_1"]
    assert pipe.get_active_adapters() == ["mine", "faceid_0", "faceid_1"]
    embeds = [inputs["face"], inputs["face"]]
    loaded = _out(pipe, inputs, embeds)
    # "mine" kept its weight of 0.5, the FaceID LoRAs have diffusers' weight 1
    pipe.set_adapters(["mine", "faceid_0", "faceid_1"], adapter_weights=[0.5, 1.0, 1.0])
    torch.testing.assert_close(_out(pipe, inputs, embeds), loaded, atol=ATOL, rtol=0)
    # and each of the three counts
    for dropped in ("mine", "faceid_0", "faceid_1"):
        kept = [n for n in ("mine", "faceid_0", "faceid_1") if n != dropped]
        pipe.set_adapters(kept, adapter_weights=[0.5 if n == "mine" else 1.0 for n in kept])
        assert _differs(_out(pipe, inputs, embeds), loaded), dropped


# --- parity with diffusers, from files --------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["faceid.safetensors", "faceid.bin"])
def test_files_load_as_in_diffusers(inputs, tmp_path, file_name):
    pipe, fresh = _pipe(), _pipe()
    state = _faceid(pipe.unet, 3)
    if file_name.endswith(".safetensors"):
        save_file(_flat(state), str(tmp_path / file_name))  # flat, prefixed: the published form
    else:
        torch.save(state, tmp_path / file_name)  # nested pickle, as the published .bin files
    fresh.load_ip_adapter(str(tmp_path), subfolder=None, weight_name=file_name, image_encoder_folder=None,
                          local_files_only=True, low_cpu_mem_usage=False)
    assert load_public_adapters(pipe, tmp_path, file_name, local_files_only=True) == ["faceid_0"]
    assert pipe.get_active_adapters() == fresh.get_active_adapters() == ["faceid_0"]
    torch.testing.assert_close(_out(pipe, inputs, [inputs["face"]]), _out(fresh, inputs, [inputs["face"]]),
                               atol=ATOL, rtol=0)


def test_safetensors_beside_a_bin_is_preferred(inputs, tmp_path):
    pipe, reference = _pipe(), _pipe()
    pickled, safe = _faceid(pipe.unet, 4), _faceid(pipe.unet, 5)
    torch.save(pickled, tmp_path / "faceid.bin")
    save_file(_flat(safe), str(tmp_path / "faceid.safetensors"))
    _stock_load(reference, [safe])
    load_public_adapters(pipe, tmp_path, "faceid.bin", local_files_only=True)
    torch.testing.assert_close(_out(pipe, inputs, [inputs["face"]]), _out(reference, inputs, [inputs["face"]]),
                               atol=ATOL, rtol=0)
    load_public_adapters(pipe, tmp_path, "faceid.bin", local_files_only=True, prefer_safetensors=False)
    assert _differs(_out(pipe, inputs, [inputs["face"]]), _out(reference, inputs, [inputs["face"]]))


def test_bad_inputs_are_refused(tmp_path):
    pipe = _pipe()
    with pytest.raises(ValueError, match=r"must end in \.safetensors or \.bin"):
        load_public_adapters(pipe, tmp_path, "faceid.ckpt")
    with pytest.raises(ValueError, match="takes no weight name"):
        load_public_adapters(pipe, _faceid(pipe.unet, 1), "faceid.bin")


def test_failed_load_leaves_no_adapter_and_the_user_lora(inputs, tmp_path):
    pipe = _pipe()
    _user_lora(pipe, weight=0.5)
    before = _out(pipe, inputs)
    load_public_adapters(pipe, _faceid(pipe.unet, 1))
    with pytest.raises(ModelFileError, match="missing.safetensors"):
        load_public_adapters(pipe, tmp_path, "missing.safetensors", local_files_only=True)
    assert pipe.unet.encoder_hid_proj is None
    assert pipe.get_list_adapters()["unet"] == ["mine"] and pipe.get_active_adapters() == ["mine"]
    torch.testing.assert_close(_out(pipe, inputs), before, atol=ATOL, rtol=0)


# --- an independent oracle: FaceID without LoRA at one cross-attention layer ------------------------------


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention (Vaswani et al. 2017, eq. 1) on `[B, L, C]` tensors."""
    b, _, c = q.shape
    split = lambda x: x.reshape(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
    weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads)).softmax(-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, -1, c)


def test_faceid_matches_the_original_maths_at_one_layer(inputs):
    pipe = _pipe()
    state = _faceid(pipe.unet, 6, lora_rank=0)
    assert load_public_adapters(pipe, state) == []
    pipe.set_ip_adapter_scale(0.6)
    layer = cross_attention_layers(pipe.unet)[0]
    attn = pipe.unet.get_submodule(layer.name.removesuffix(".processor"))
    seen = {}
    hook = attn.register_forward_hook(
        lambda module, args, kwargs, out: seen.update(h=args[0], context=kwargs["encoder_hidden_states"], out=out),
        with_kwargs=True)
    try:
        _out(pipe, inputs, [inputs["face"]])
    finally:
        hook.remove()

    # IP-Adapter (Ye et al. 2023) FaceID: tokens = LayerNorm(MLP(id)) as T tokens of width D
    proj, ip = state["image_proj"], state["ip_adapter"]
    width = proj["norm.weight"].shape[0]
    hidden = F.gelu(inputs["face"][0] @ proj["proj.0.weight"].T + proj["proj.0.bias"])
    tokens = F.layer_norm((hidden @ proj["proj.2.weight"].T + proj["proj.2.bias"]).reshape(1, -1, width),
                          (width,), proj["norm.weight"], proj["norm.bias"])
    text, (ip_tokens,) = seen["context"]
    torch.testing.assert_close(ip_tokens[:, 0], tokens, atol=ATOL, rtol=0)
    # decoupled cross-attention (sec. 3.2): out = Attn(q, K_text, V_text) + s · Attn(q, W_k' ip, W_v' ip)
    with torch.no_grad():
        q = attn.to_q(seen["h"])
        mixed = (_attend(q, attn.to_k(text), attn.to_v(text), attn.heads)
                 + 0.6 * _attend(q, tokens @ ip[f"{layer.key}.to_k_ip.weight"].T,
                                 tokens @ ip[f"{layer.key}.to_v_ip.weight"].T, attn.heads))
        expected = attn.to_out[0](mixed)
    torch.testing.assert_close(seen["out"], expected, atol=ATOL, rtol=0)
