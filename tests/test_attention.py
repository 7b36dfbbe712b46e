"""Region-masked IP attention at the processor level, with hand-made tensors."""

import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from facestudio.attention import LayerMasks, RegionIPAdapterAttnProcessor, RegionMasks, layer_size, resize_masks

H = W = 8
DIM, CROSS, HEADS, TOKENS = 32, 64, 4, 4


@pytest.fixture()
def layer():
    torch.manual_seed(0)
    attn = Attention(query_dim=DIM, cross_attention_dim=CROSS, heads=HEADS, dim_head=DIM // HEADS)
    proc = RegionIPAdapterAttnProcessor(DIM, CROSS, num_tokens=[TOKENS], scale=1.0)
    for p in proc.parameters():
        torch.nn.init.normal_(p, std=0.3)
    attn.set_processor(proc)
    hidden = torch.randn(2, H * W, DIM)
    text = torch.randn(2, 7, CROSS)
    ip = torch.randn(2, 2, TOKENS, CROSS)  # 2 identities of one adapter
    return attn, proc, hidden, text, ip


def _halves(strengths=(1.0, 1.0)):
    masks = torch.zeros(2, H, W)
    masks[0, :, : W // 2] = 1
    masks[1, :, W // 2:] = 1
    return LayerMasks((RegionMasks(masks, strengths),), (H, W))


def test_changing_one_identity_changes_nothing_outside_its_region(layer):
    attn, _, hidden, text, ip = layer
    masks = _halves()
    before = attn(hidden, encoder_hidden_states=(text, [ip]), ip_adapter_masks=masks)
    changed = ip.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])
    after = attn(hidden, encoder_hidden_states=(text, [changed]), ip_adapter_masks=masks)
    outside = (masks.adapters[0].masks[1] == 0).reshape(-1)
    assert torch.equal(before[:, outside], after[:, outside])  # exactly, not approximately
    assert (before[:, ~outside] - after[:, ~outside]).abs().max() > 1e-3


def test_matches_the_decoupled_attention_formula(layer):
    """An independent oracle: out = to_out(attn(q, K_text, V_text) + sum_i s_i m_i attn(q, W_k ip_i, W_v ip_i))."""
    attn, proc, hidden, text, ip = layer
    strengths = (0.7, 1.3)
    masks = _halves(strengths)
    got = attn(hidden, encoder_hidden_states=(text, [ip]), ip_adapter_masks=masks)

    def heads(x):
        return x.view(x.shape[0], -1, HEADS, DIM // HEADS).transpose(1, 2)

    def attend(q, k, v):
        weights = (heads(q) @ heads(k).transpose(-1, -2) / (DIM // HEADS) ** 0.5).softmax(-1)
        return (weights @ heads(v)).transpose(1, 2).reshape(q.shape[0], -1, DIM)

    q = attn.to_q(hidden)
    out = attend(q, attn.to_k(text), attn.to_v(text))
    for i, s in enumerate(strengths):
        m = masks.adapters[0].masks[i].reshape(1, -1, 1)
        out = out + s * m * attend(q, proc.to_k_ip[0](ip[:, i]), proc.to_v_ip[0](ip[:, i]))
    expected = attn.to_out[1](attn.to_out[0](out))
    assert torch.allclose(got, expected, atol=1e-5)


def test_strength_zero_is_the_plain_attention(layer):
    attn, _, hidden, text, ip = layer
    off = attn(hidden, encoder_hidden_states=(text, [ip]), ip_adapter_masks=_halves((0.0, 0.0)))
    attn.set_processor(AttnProcessor2_0())
    plain = attn(hidden, encoder_hidden_states=text)
    assert torch.allclose(off, plain, atol=1e-6)


def test_masks_are_area_averaged_and_never_negative():
    box = torch.zeros(1, 64, 64)
    box[:, 10:37, 20:51] = 1.0
    ours = resize_masks(box, 8, 8)
    assert ours.min() >= 0 and ours.max() <= 1
    assert torch.allclose(ours.mean(), box.mean(), atol=1e-6)  # area averaging keeps the mass
    theirs = IPAdapterMaskProcessor.downsample(box, 1, 64, 1)
    assert theirs.min() < -0.05  # diffusers' bicubic: an identity subtracted at the edge
    assert torch.equal(resize_masks(torch.ones(1, 2, 2), 4, 4), torch.ones(1, 4, 4))  # nearest when enlarging


@pytest.mark.parametrize("h, w", [(8, 8), (8, 12), (7, 5), (64, 40), (96, 64)])
def test_diffusers_resize_is_the_identity_at_the_layer_size(h, w):
    """We hand each layer a mask of its own size; diffusers' resize must then leave it untouched."""
    for queries in {h * w, -(-h // 2) * -(-w // 2), -(-h // 4) * -(-w // 4)}:
        lh, lw = layer_size((h, w), queries)
        mask = torch.rand(1, lh, lw)
        assert torch.allclose(IPAdapterMaskProcessor.downsample(mask, 1, queries, 1).reshape(lh, lw), mask[0],
                              atol=1e-6)


def test_layer_size_follows_the_unet_downsampling():
    assert layer_size((8, 8), 64) == (8, 8)
    assert layer_size((8, 8), 16) == (4, 4)
    assert layer_size((7, 5), 12) == (4, 3)  # ceil at every stride-2 convolution
    with pytest.raises(ValueError, match="no UNet level"):
        layer_size((8, 8), 10)


def test_region_masks_validate():
    with pytest.raises(ValueError, match="2 masks but 1 strengths"):
        RegionMasks(torch.ones(2, 4, 4), (1.0,))
    scaled = RegionMasks(torch.ones(2, 4, 4), (0.5, 2.0)).at(2, 2)
    assert scaled.shape == (1, 2, 2, 2) and scaled[0, 0].max() == 0.5 and scaled[0, 1].max() == 2.0
