"""The oracle: PuLID's own code (ToTheBeginning/PuLID, facexlib's BiSeNet) and facestudio's encoder, on the
same random weights in the published layouts and the same inputs, give the same ID tokens (<= 1e-4).

Skipped, with the reason, when the reference code is absent (tests/support/pulid_reference.py says where it
looks: $PULID_REFERENCE / $FACEXLIB_REFERENCE or the fetched mirrors under /work/.mirror). The full-size
checks (EVA02-CLIP-L, the published ID encoder sizes) are `slow`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "support"))
import pulid_reference as R  # noqa: E402

if R.missing_reason():
    pytest.skip(R.missing_reason(), allow_module_level=True)

from facestudio.errors import ModelFileError  # noqa: E402
from facestudio.guidance.pulid import checkpoints, eva, parsing  # noqa: E402
from facestudio.guidance.pulid.encoder import PuLIDEncoder, tiny_encoder_config  # noqa: E402
from facestudio.guidance.pulid.idformer import IDFormerConfig, MLPEncoderConfig  # noqa: E402

TOLERANCE = 1e-4


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def _published_file(tmp_path, name: str, reference_module) -> Path:
    """The reference module's weights saved as PuLID's file of that version (encoder prefix, plus one attention
    key so the split sees a whole checkpoint)."""
    from safetensors.torch import save_file

    v = checkpoints.VERSIONS[name]
    state = {v.encoder_prefix + k: t.detach().clone().contiguous() for k, t in reference_module.state_dict().items()}
    state[v.attention_prefix + "0.to_q.weight"] = torch.zeros(2, 2)
    path = tmp_path / v.filename
    torch.save(state, path) if path.suffix == ".bin" else save_file(state, path)
    return path


def _ours(tmp_path, name: str, reference_module, config):
    encoder, attention = checkpoints.load_checkpoint_file(_published_file(tmp_path, name, reference_module), name,
                                                          config)
    assert list(attention) == ["0.to_q.weight"]
    return encoder


def _inputs(config, photos: int, tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    id_cond = torch.randn(1, photos, config.id_dim, generator=g)
    id_cond[..., :512] *= 0.9  # raw ArcFace magnitudes, then a unit EVA embedding
    id_cond[..., 512:] /= id_cond[..., 512:].norm(dim=-1, keepdim=True)
    hidden = [torch.randn(1, photos * tokens, config.vit_dim, generator=g) for _ in range(5)]
    return (id_cond[:, 0] if photos == 1 else id_cond), hidden


# ------------------------------------------------------------------------------------------------ ID encoders


def _check_id_encoder(tmp_path, name: str, config, photos=(1, 2), tokens: int = 577):
    family = "v1" if name == "v1" else "former"
    reference = R.id_encoder("v1" if family == "v1" else "v1.1", config, seed=3)
    ours = _ours(tmp_path, name, reference, config)
    diffs = {}
    for n in photos if family == "former" else (1,):
        id_cond, hidden = _inputs(config, n, tokens, seed=n)
        with torch.no_grad():
            diffs[n] = _max_diff(ours(id_cond, hidden), reference(id_cond, hidden))
            zeros = (torch.zeros(1, config.id_dim), [torch.zeros(1, tokens, config.vit_dim)] * 5)
            diffs[f"uncond{n}"] = _max_diff(ours(*zeros), reference(*zeros))
    print(f"{name} {config}: max |ours - reference| {diffs}")  # shown with pytest -s
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


@pytest.mark.parametrize("name", ["v1.1", "flux-v0.9.1"])
def test_id_former_matches_the_reference_at_the_published_token_and_feature_widths(tmp_path, name):
    # the published widths in and out (id_cond 1280, EVA 1024, 577 tokens, ID tokens 2048, 32 queries, 5 ID
    # tokens, 10 layers); a narrower inner width (64) keeps it quick: `slow` runs the published sizes
    _check_id_encoder(tmp_path, name, IDFormerConfig(dim=64, dim_head=16, heads=4))


def test_v1_encoder_matches_the_reference_at_the_published_sizes(tmp_path):
    _check_id_encoder(tmp_path, "v1", MLPEncoderConfig())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1.1", "flux-v0.9.1"])
def test_id_former_matches_the_reference_at_the_published_sizes(tmp_path, name):
    _check_id_encoder(tmp_path, name, IDFormerConfig(), photos=(1, 3))


# ------------------------------------------------------------------------------------------------ EVA-CLIP


def _check_tower(vision_cfg, embed_dim, config: eva.EvaConfig, batch: int):
    reference = R.randomise_(R.eva_vision_tower(vision_cfg, embed_dim), seed=5)
    ours = eva.load_tower(R.published_eva_state(reference), config)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref_embedding, ref_hidden = reference(pixels, return_all_features=False, return_hidden=True, shuffle=False)
    embedding, hidden = ours(pixels)
    diffs = [_max_diff(embedding, ref_embedding)] + [_max_diff(a, b) for a, b in zip(hidden, ref_hidden)]
    assert len(hidden) == len(ref_hidden) == 5
    print(f"EVA-CLIP {config}: max |ours - reference| embedding, hidden states: {diffs}")  # pytest -s
    assert max(diffs) <= TOLERANCE, diffs


def test_eva_clip_tower_matches_the_reference_on_the_published_layout():
    tiny = eva.TINY_EVA
    _check_tower(dict(image_size=tiny.image_size, width=tiny.dim, head_width=tiny.dim // tiny.heads,
                      pt_hw_seq_len=tiny.rope_grid, xattn=False), tiny.embed_dim, tiny, batch=2)


def test_published_eva_clip_keys_are_all_read_and_the_rotary_tables_are_eva_clips():
    tiny = eva.TINY_EVA
    reference = R.eva_vision_tower(dict(image_size=tiny.image_size, width=tiny.dim, head_width=16,
                                        pt_hw_seq_len=tiny.rope_grid, xattn=False), tiny.embed_dim)
    published = R.published_eva_state(reference)
    model = eva.build_tower(tiny)
    mapped = eva.tower_state(published, model)
    assert set(mapped) == set(model.state_dict())
    tables = [k for k in published if "rope" in k]
    assert "visual.rope.freqs_cos" in tables and "visual.blocks.23.attn.rope.freqs_sin" in tables
    assert len(published) - len(tables) == len(mapped)
    # the recomputed tables are eva_clip's (VisionRotaryEmbeddingFast, 2-grid fitted to 4)
    torch.testing.assert_close(model.rope_cos, reference.rope.freqs_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.rope_sin, reference.rope.freqs_sin, rtol=0, atol=1e-6)
    # files without the tables load too (they are constants)
    assert set(eva.tower_state({k: v for k, v in published.items() if k not in tables}, model)) == set(mapped)
    published["visual.blocks.3.attn.extra_bias"] = torch.zeros(3)
    del published["visual.blocks.0.mlp.w3.weight"]
    published["visual.head.bias"] = torch.zeros(5)
    with pytest.raises(ModelFileError, match=r"missing visual\.blocks\.0\.mlp\.w3\.weight; unexpected "
                                             r"visual\.blocks\.3\.attn\.extra_bias; wrong shape visual\.head\.bias "
                                             r"\[5\] \(expected \[24\]\)"):
        eva.tower_state(published, model)
    unfitted = R.eva_vision_tower(dict(image_size=tiny.image_size, width=tiny.dim, head_width=16,
                                       pt_hw_seq_len=tiny.rope_grid, xattn=False, intp_freq=False), tiny.embed_dim)
    with pytest.raises(ModelFileError, match=r"wrong shape rotary table visual\.rope\.freqs_cos \[4, 16\] and 49 "
                                             r"more \(expected \[16, 16\]\)$"):
        eva.tower_state(R.published_eva_state(unfitted), model)
    # tables of the right shape from another trained grid (4 rather than 2)
    with pytest.raises(ModelFileError, match=r"visual\.rope\.freqs_cos and 49 more not the rotary table of a "
                                             r"4-patch grid fitted to 4$"):
        eva.tower_state(R.published_eva_state(reference), eva.build_tower(dataclasses.replace(tiny, rope_grid=4)))


@pytest.mark.slow
def test_eva02_clip_l_336_matches_the_reference_at_full_size():
    _check_tower({"xattn": False}, None, eva.EvaConfig(), batch=1)


# ------------------------------------------------------------------------------------------------ parsing


def test_bisenet_matches_facexlib():
    reference = R.bisenet(seed=7)
    ours = parsing.load_parser(reference.state_dict())
    images = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(8))
    normalised = (images - torch.tensor(parsing.PARSE_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        parsing.PARSE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref_logits = reference(normalised)[0]
        logits = ours.model(normalised)
    assert _max_diff(logits, ref_logits) <= TOLERANCE * max(1.0, float(ref_logits.abs().max()))
    assert torch.equal(ours.labels(images), ref_logits.argmax(dim=1, keepdim=True))


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def parts():
    """A tiny reference EVA-CLIP and facexlib's BiSeNet, and facestudio's, with the same random weights."""
    tiny = eva.TINY_EVA
    ref_tower = R.randomise_(R.eva_vision_tower(dict(image_size=tiny.image_size, width=tiny.dim,
                                                     head_width=tiny.dim // tiny.heads,
                                                     pt_hw_seq_len=tiny.rope_grid, xattn=False), tiny.embed_dim), 9)
    ref_parser = R.bisenet(seed=10)
    return (ref_tower, ref_parser, eva.load_tower(R.published_eva_state(ref_tower), tiny),
            parsing.load_parser(ref_parser.state_dict()))


def _photos(n: int, seed: int):
    """Photos as `(image, aligned 512 face, raw antelopev2 embedding)`: faces with some structure (smooth blobs
    on noise), so that the parser gives several classes and the whitening matters."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[0:512, 0:512] / 512.0
        base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)) + np.cos(5 * yy + rng.uniform(0, 6)) for _ in range(3)], -1)
        aligned = np.clip(127 + 60 * base + rng.normal(0, 25, (512, 512, 3)), 0, 255).astype(np.uint8)
        out.append((aligned.copy(), aligned, (rng.normal(size=512) * 0.9).astype(np.float32)))
    return out


@pytest.mark.parametrize("name,photos", [("v1", 1), ("v1.1", 2), ("flux-v0.9.1", 1)])
def test_id_tokens_match_the_reference_get_id_embedding(tmp_path, parts, name, photos):
    ref_tower, ref_parser, tower, parser = parts
    config = tiny_encoder_config(name)
    reference_encoder = R.id_encoder("v1" if name == "v1" else "v1.1", config, seed=11)
    encoder = PuLIDEncoder(name, _ours(tmp_path, name, reference_encoder, config), tower, parser)
    inputs = _photos(photos, seed=photos)
    ref_cond, ref_uncond = R.get_id_embedding(name, inputs, reference_encoder, ref_tower, ref_parser)
    features = encoder.features_from_aligned(np.stack([p[1] for p in inputs]), np.stack([p[2] for p in inputs]))
    cond, uncond = encoder.id_tokens(features), encoder.null_tokens(photos)
    white = float((features[0].face_image == 1).all(dim=0).float().mean())
    assert 0 < white < 1  # some of the face is whitened as background, the rest grey
    assert cond.shape == ref_cond.shape and uncond.shape == ref_uncond.shape
    diffs = {"cond": _max_diff(cond, ref_cond), "uncond": _max_diff(uncond, ref_uncond),
             "largest token value": float(ref_cond.abs().max())}
    print(f"{name}, {photos} photo(s): {diffs}")  # pytest -s
    diffs.pop("largest token value")
    assert max(diffs.values()) <= TOLERANCE, diffs
