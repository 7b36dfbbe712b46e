"""Guidance maths and the identity adapter: pure functions and the checkpoint layout."""

import json

import numpy as np
import pytest
import torch

from facestudio.errors import ModelFileError
from facestudio.guidance import identity as idg
from facestudio.guidance.cfg import combine_guidance, combine_two_way
from facestudio.guidance.layout import cross_attention_layers, read_checkpoint, save_checkpoint
from facestudio.models import tiny_components


def test_reference_scale_zero_is_text_guidance():
    eps = torch.randn(6, 4, 8, 8)
    uncond, text, full = eps.chunk(3)
    assert torch.allclose(combine_guidance(eps, 5.0, 0.0), combine_two_way(torch.cat([uncond, text]), 5.0))
    # equal scales: ordinary guidance of (prompt + reference) against (negative prompt, no reference)
    assert torch.allclose(combine_guidance(eps, 4.0, 4.0), combine_two_way(torch.cat([uncond, full]), 4.0), atol=1e-6)
    with pytest.raises(ValueError, match="3 \\* B"):
        combine_guidance(eps[:4], 1.0, 1.0)


def _identity(seed, photos=1, name="x"):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=128).astype(np.float32)
    return idg.Identity(e / np.linalg.norm(e), rng.random((64 * photos, 128)).astype(np.float32), "dlib", name)


def test_pooling_averages_embeddings_and_keeps_details():
    a, b = _identity(1), _identity(2)
    pooled = idg.pool([a, b])
    expected = (a.embedding + b.embedding) / np.linalg.norm(a.embedding + b.embedding)
    assert np.allclose(pooled.embedding, expected, atol=1e-6)
    assert pooled.detail.shape == (128, 128) and pooled.num_photos == 2


def test_mixing_weights():
    a, b = _identity(1, photos=2), _identity(2)
    only_a = idg.mix([a, b], [1.0, 0.0])
    assert np.allclose(only_a.embedding, a.embedding, atol=1e-6)
    assert np.allclose(only_a.detail, a.detail.reshape(2, 64, 128).mean(0), atol=1e-6)
    ab, ba = idg.mix([a, b], [0.5, 0.5]), idg.mix([b, a], [0.5, 0.5])
    assert np.allclose(ab.embedding, ba.embedding, atol=1e-7) and np.allclose(ab.detail, ba.detail, atol=1e-7)
    assert abs(np.linalg.norm(ab.embedding) - 1) < 1e-6
    with pytest.raises(ValueError, match="sum to 1"):
        idg.mix([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="different recognisers"):
        idg.mix([a, idg.Identity(a.embedding, a.detail, "arcface")], [0.5, 0.5])


@pytest.fixture(scope="module")
def unet():
    return tiny_components()["unet"]


def test_checkpoint_layout_is_what_diffusers_reads(unet, tmp_path):
    config = idg.IdentityAdapterConfig(cross_attention_dim=unet.config.cross_attention_dim)
    state = idg.new_identity_adapter(unet, config, seed=3)
    # the key/value projections start from the UNet's own
    layers = cross_attention_layers(unet)
    assert [f"{l.key}.to_k_ip.weight" for l in layers] == [k for k in state["ip_adapter"] if "to_k_ip" in k]
    first = unet.get_submodule(layers[0].name.removesuffix(".processor"))
    assert torch.equal(state["ip_adapter"]["1.to_k_ip.weight"], first.to_k.weight)
    # heads are read back by diffusers as to_q.out // 64
    assert state["image_proj"]["perceiver_resampler.layers.0.0.to_q.weight"].shape[0] % 64 == 0
    # diffusers' own conversion turns it back into exactly the projection we made
    converted = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        reference = idg.new_projection(config)
    assert converted.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in reference.state_dict().items())
    # flat safetensors with prefixes, and back
    save_checkpoint(tmp_path, state["image_proj"], state["ip_adapter"], config.to_dict())
    loaded = read_checkpoint(tmp_path)
    assert all(torch.equal(loaded["image_proj"][k], v) for k, v in state["image_proj"].items())
    assert json.loads((tmp_path / "facestudio_adapter.json").read_text())["recognizer"] == "dlib"


def test_tokens_of_a_mix_with_weight_one_are_the_identity_itself(unet):
    config = idg.IdentityAdapterConfig(cross_attention_dim=unet.config.cross_attention_dim)
    projection = idg.new_projection(config)
    a, b = _identity(1), _identity(2)
    assert torch.allclose(idg.identity_tokens(projection, idg.mix([a, b], [1, 0]), config),
                          idg.identity_tokens(projection, a, config), atol=1e-6)
    assert projection.clip_embeds is None  # nothing of the call stays on the module
    with pytest.raises(ValueError, match="needs 'dlib'"):
        idg.identity_tokens(projection, idg.Identity(a.embedding, a.detail, "arcface", "x"), config)


def test_gradients_reach_the_projection(unet):
    config = idg.IdentityAdapterConfig(cross_attention_dim=unet.config.cross_attention_dim)
    projection = idg.new_projection(config)
    idg.identity_tokens(projection, _identity(1), config).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projection.parameters())


def test_config_refuses_other_kinds():
    with pytest.raises(ModelFileError, match="not an identity adapter"):
        idg.IdentityAdapterConfig.from_dict({"kind": "style"})
    with pytest.raises(ModelFileError, match="unknown adapter settings"):
        idg.IdentityAdapterConfig.from_dict({"kind": "identity", "colour": "red"})
