"""PuLID's ID encoder on tiny models built in code: shapes, photos pooled, "no identity", key checks, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch


from facestudio.errors import ModelFileError  # noqa: E402
from facestudio.guidance.pulid import checkpoints, eva, parsing  # noqa: E402
from facestudio.guidance.pulid.encoder import (  # noqa: E402
    MAX_PHOTOS,
    PuLIDEncoder,
    tiny_encoder_config,
    tiny_pulid_encoder,
)
from facestudio.guidance.pulid.idformer import IDFormerConfig, MLPEncoderConfig, build_id_encoder  # noqa: E402

VERSIONS = ("v1", "v1.1", "flux-v0.9.1")


def _aligned(n: int, seed: int = 0):
    """Random 512 px "aligned faces" and raw embeddings of ArcFace's magnitude (norms of about 20)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 512, 512, 3), dtype=np.uint8),
            (rng.normal(size=(n, 512)) * 0.9).astype(np.float32))


@pytest.fixture(scope="module")
def shared():
    """One tiny tower and parser, an ID encoder per version, and the features of three photos (one batch)."""
    base = tiny_pulid_encoder("v1.1", seed=1)
    torch.manual_seed(2)
    encoders = {v: PuLIDEncoder(v, build_id_encoder(tiny_encoder_config(v)).eval(), base.tower, base.parser)
                for v in VERSIONS}
    aligned, embeddings = _aligned(3)
    return encoders, base.features_from_aligned(aligned, embeddings), (aligned, embeddings)


def test_shapes_of_each_version(shared):
    encoders, photos, _ = shared
    tiny_eva = eva.TINY_EVA
    for p in photos:
        assert p.id_cond.shape == (512 + tiny_eva.embed_dim,)
        assert len(p.vit_hidden) == 5 and all(h.shape == (tiny_eva.tokens, tiny_eva.dim) for h in p.vit_hidden)
        assert p.face_image.shape == (3, 512, 512)
        # the EVA half of id_cond is unit length, the ArcFace half is the raw embedding
        assert torch.linalg.norm(p.id_cond[512:]).item() == pytest.approx(1.0, abs=1e-5)
    v1 = encoders["v1"]
    assert v1.id_tokens(photos[:1]).shape == (1, 10, 64)
    assert v1.id_tokens(photos[:2]).shape == (1, 15, 64)  # the main photo's 10, then 5 more
    assert v1.id_tokens(photos[:2], id_mix=True).shape == (1, 20, 64)
    assert v1.null_tokens(2).shape == (1, 15, 64)
    for name in ("v1.1", "flux-v0.9.1"):
        for n in (1, 3):
            assert encoders[name].id_tokens(photos[:n]).shape == (1, 32, 64)
        assert encoders[name].null_tokens(3).shape == (1, 32, 64)


def test_v1_photos_side_by_side_as_the_demo_does(shared):
    encoders, photos, _ = shared
    v1 = encoders["v1"]
    alone = [v1.id_tokens([p]) for p in photos[:3]]
    torch.testing.assert_close(v1.id_tokens(photos[:3]), torch.cat([alone[0], alone[1][:, :5], alone[2][:, :5]], 1),
                               rtol=0, atol=0)
    torch.testing.assert_close(v1.id_tokens(photos[:2], id_mix=True), torch.cat(alone[:2], 1), rtol=0, atol=0)


def test_joint_photos_depend_on_every_photo_and_their_order(shared):
    encoders, photos, _ = shared
    former = encoders["v1.1"]
    one, two, swapped = (former.id_tokens(ps) for ps in (photos[:1], photos[:2], [photos[1], photos[0]]))
    assert (one - two).abs().max() > 1e-3
    # the photos' tokens are a set for the perceiver's attention, so the order matters only through rounding
    torch.testing.assert_close(two, swapped, rtol=1e-4, atol=1e-5)


def test_null_tokens_are_the_encoder_on_zeros_whatever_the_photos(shared):
    encoders, _, _ = shared
    for name, encoder in encoders.items():
        c = encoder.id_encoder.config
        with torch.no_grad():
            zeros = encoder.id_encoder(torch.zeros(1, c.id_dim), [torch.zeros(1, eva.TINY_EVA.tokens, c.vit_dim)] * 5)
        expected = torch.cat([zeros, zeros[:, :5]], 1) if name == "v1" else zeros
        torch.testing.assert_close(encoder.null_tokens(2), expected, rtol=0, atol=0)


def test_batch_equals_singles_and_runs_repeat(shared):
    encoders, photos, (aligned, embeddings) = shared
    alone = encoders["v1.1"].features_from_aligned(aligned[1:2], embeddings[1:2])[0]
    torch.testing.assert_close(alone.id_cond, photos[1].id_cond, rtol=1e-5, atol=1e-5)
    for a, b in zip(alone.vit_hidden, photos[1].vit_hidden):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the tokens of the same features are the same every time
    torch.testing.assert_close(encoders["v1.1"].id_tokens([alone]), encoders["v1.1"].id_tokens([alone]), rtol=0, atol=0)


def test_photo_count_and_options_are_checked(shared):
    encoders, photos, _ = shared
    with pytest.raises(ValueError, match=f"1 to {MAX_PHOTOS} photos"):
        encoders["v1.1"].id_tokens(list(photos) * 2)
    with pytest.raises(ValueError, match="1 to"):
        encoders["v1"].id_tokens([])
    with pytest.raises(ValueError, match="id_mix is PuLID v1's option"):
        encoders["flux-v0.9.1"].id_tokens(photos[:2], id_mix=True)


def test_whitening_keeps_face_classes_grey_and_makes_the_rest_white():
    images = torch.rand(1, 3, 4, 4)
    labels = torch.tensor([[0, 1, 16, 2], [18, 13, 7, 8], [9, 14, 15, 17], [10, 11, 12, 6]]).view(1, 1, 4, 4)
    out = parsing.whiten_background(images, labels)
    gray = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    background = torch.isin(labels[:, 0], torch.tensor(parsing.BACKGROUND_LABELS))
    assert background.sum() == 8
    for c in range(3):
        torch.testing.assert_close(out[:, c][background], torch.ones(8))
        torch.testing.assert_close(out[:, c][~background], gray[~background])


# ------------------------------------------------------------------------------------------------ layouts


def test_published_layouts_have_the_checkpoints_sizes():
    v11 = checkpoints.encoder_layout(IDFormerConfig())
    assert v11["latents"] == (1, 32, 1024) and v11["proj_out"] == (1024, 2048)
    assert v11["id_embedding_mapping.0.weight"] == (1024, 1280)
    assert v11["id_embedding_mapping.6.weight"] == (5 * 1024, 1024)
    assert v11["layers.9.0.to_kv.weight"] == (2048, 1024) and v11["layers.9.1.1.weight"] == (4096, 1024)
    assert v11["mapping_4.6.weight"] == (1024, 1024) and "layers.10.0.to_q.weight" not in v11
    v1 = checkpoints.encoder_layout(MLPEncoderConfig())
    assert v1["body.0.weight"] == (1024, 1280) and v1["body.6.weight"] == (10240, 1024)
    assert v1["mapping_patch_4.6.weight"] == (2048, 1024)
    assert checkpoints.VERSIONS["flux-v0.9.1"].encoder == IDFormerConfig()


@pytest.mark.parametrize("name", VERSIONS)
def test_checkpoint_files_in_the_published_layout_load_one_to_one(name, tmp_path, shared):
    from safetensors.torch import save_file

    encoders, photos, _ = shared
    v, module = checkpoints.VERSIONS[name], encoders[name].id_encoder
    published = {v.encoder_prefix + k: t.clone().half() for k, t in module.state_dict().items()}
    published[v.attention_prefix + "0.id_to_k.weight"] = torch.zeros(4, 64)
    path = tmp_path / v.filename
    if path.suffix == ".bin":
        torch.save(published, path)
    else:
        save_file(published, path)
    loaded, attention = checkpoints.load_checkpoint_file(path, name, config=module.config)
    assert list(attention) == ["0.id_to_k.weight"]
    for key, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), rtol=0, atol=0)


def test_key_mismatches_are_all_named():
    v = checkpoints.VERSIONS["v1.1"]
    config = tiny_encoder_config("v1.1")
    state = {k: torch.zeros(s) for k, s in checkpoints.encoder_layout(config).items()}
    del state["latents"], state["layers.3.0.to_q.weight"]
    state["proj_out"] = torch.zeros(3, 3)
    state["surplus.weight"] = torch.zeros(1)
    with pytest.raises(ModelFileError) as error:
        checkpoints.check_encoder_state(state, v, config, source="pulid_v1.1.safetensors")
    message = str(error.value)
    assert message.startswith("pulid_v1.1.safetensors: its ID encoder does not fit PuLID v1.1")
    for part in ("missing id_adapter.latents, id_adapter.layers.3.0.to_q.weight",
                 "unexpected id_adapter.surplus.weight", "wrong shape id_adapter.proj_out [3, 3] (expected [32, 64])"):
        assert part in message


def test_a_checkpoint_of_another_version_is_refused_by_its_prefixes():
    flux_state = {"pulid_encoder.latents": torch.zeros(1), "pulid_ca.0.to_q.weight": torch.zeros(1)}
    with pytest.raises(ModelFileError, match=r"not a PuLID v1\.1 checkpoint: expected keys id_adapter\.\* and "
                                             r"id_adapter_attn_layers\.\*, found pulid_ca\., pulid_encoder\."):
        checkpoints.split_checkpoint(flux_state, "v1.1")
    with pytest.raises(ModelFileError, match=r"unexpected: stray\.key"):
        checkpoints.split_checkpoint({"pulid_encoder.latents": torch.zeros(1), "stray.key": torch.zeros(1)},
                                     "flux-v0.9.1")
    with pytest.raises(ValueError, match="unknown PuLID version 'v2'"):
        checkpoints.version("v2")


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        checkpoints.read_tensors(tmp_path / "pulid_v1.bin")
    bad = tmp_path / "pulid_v1.1.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        checkpoints.read_tensors(bad)


def test_eva_clip_layout_is_checked_key_by_key():
    model = eva.build_tower(eva.TINY_EVA)
    # the published layout is the tower's own keys under visual. (test_pulid_reference checks eva_clip's names)
    with pytest.raises(ModelFileError, match=r"not an EVA-CLIP checkpoint \(no visual\.\* keys; found logit_scale, "
                                             r"text\)"):
        eva.tower_state({"text.token_embedding.weight": torch.zeros(1), "logit_scale": torch.zeros(())}, model)
    with pytest.raises(ModelFileError, match=r"EVA-CLIP: does not fit EVA02-CLIP-L-14-336: missing visual\.cls_token, "
                                             r"visual\.patch_embed\.proj\.weight, visual\.patch_embed\.proj\.bias, "
                                             r"visual\.blocks\.0\.norm1\.weight, visual\.blocks\.0\.norm1\.bias and "
                                             r"\d+ more; wrong shape visual\.pos_embed \[1, 577, 32\] "
                                             r"\(expected \[1, 17, 32\]\)"):
        eva.tower_state({"visual.pos_embed": torch.zeros(1, 577, 32)}, model)
    state = {eva.PREFIX + k: v.clone().half() for k, v in model.state_dict().items()}
    state["visual.rope.freqs_cos"] = torch.zeros(16, 8)
    with pytest.raises(ModelFileError, match=r"wrong shape rotary table visual\.rope\.freqs_cos \[16, 8\] "
                                             r"\(expected \[16, 16\]\)"):
        eva.tower_state(state, model)
    # a half-precision file in the published layout (and its rotary tables) loads one to one
    state["visual.rope.freqs_cos"] = model.rope_cos.half()
    loaded = eva.load_tower(state, eva.TINY_EVA).model
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), rtol=0, atol=0)


def test_eva_tower_reads_the_hidden_states_pulid_reads():
    torch.manual_seed(0)
    model = eva.build_tower(eva.TINY_EVA)
    pixels = torch.randn(2, 3, 56, 56)
    embedding, hidden = eva.EvaTower(model, eva.TINY_EVA)(pixels)
    assert embedding.shape == (2, 24) and [h.shape for h in hidden] == [(2, 17, 32)] * 5
    # by hand: the sequence after blocks 3, 7, 11, 15, 19, and the class token through the norm and head
    with torch.no_grad():
        x = torch.cat((model.cls_token.expand(2, -1, -1), model.patch_embed(pixels)), 1) + model.pos_embed
        outputs = []
        for block in model.blocks:
            x = block(x, model.rope_cos, model.rope_sin)
            outputs.append(x)
        for got, index in zip(hidden, (3, 7, 11, 15, 19)):
            torch.testing.assert_close(got, outputs[index], rtol=0, atol=0)
        torch.testing.assert_close(embedding, model.head(model.norm(x)[:, 0]), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"EVA-CLIP takes \[B, 3, 56, 56\] images, got \[2, 3, 64, 64\]"):
        eva.EvaTower(model, eva.TINY_EVA)(torch.zeros(2, 3, 64, 64))


def test_bisenet_layout_is_checked_and_loads_by_key():
    model = parsing.BiSeNet()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    parser = parsing.load_parser(state)  # counters absent, as in older files: accepted
    torch.testing.assert_close(parser.model.ffm.conv2.weight, model.ffm.conv2.weight, rtol=0, atol=0)
    del state["cp.arm16.bn_atten.running_mean"]
    state["cp.resnet.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ModelFileError, match=r"not facexlib's BiSeNet face parser \(parsing_bisenet\.pth\): "
                                             r"missing cp\.arm16\.bn_atten\.running_mean; "
                                             r"wrong shape cp\.resnet\.conv1\.weight"):
        parsing.load_parser(state)


# ------------------------------------------------------------------------------------------------ photos


@pytest.fixture(scope="module")
def antelope(tmp_path_factory):
    """A tiny ArcFace network exported as antelopev2's file name, in an unpacked antelopev2 folder."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from test_arcface import _export, _tiny_arcface

    from facestudio.guidance.pulid.antelope import AntelopeRecognizer

    folder = tmp_path_factory.mktemp("antelopev2")
    net = _tiny_arcface(3)
    _export(net, folder / "glintr100.onnx")
    return AntelopeRecognizer(folder), net


def test_antelopev2_gives_the_raw_embedding_pulid_reads(antelope):
    from facestudio.faces.arcface import arcface_blob

    recognizer, net = antelope
    assert recognizer.name == "antelopev2" and recognizer.model_path.name == "glintr100.onnx"
    crops = np.random.default_rng(4).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    raw = recognizer.raw_embeddings(crops)
    with torch.no_grad():
        expected = net(torch.from_numpy(arcface_blob(crops))).numpy()
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # not normalised, unlike embed_crops
    np.testing.assert_allclose(recognizer.embed_crops(crops), raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_a_missing_antelopev2_file_says_where_to_get_it(tmp_path):
    from facestudio.guidance.pulid.antelope import AntelopeRecognizer

    with pytest.raises(ModelFileError, match=r"glintr100\.onnx: ArcFace model file not found; .*antelopev2\.zip.*"
                                             r"non-commercial"):
        AntelopeRecognizer(tmp_path)


def test_photos_of_a_person_become_id_tokens(antelope, analyzer, photos):
    recognizer, _ = antelope
    encoder = tiny_pulid_encoder("v1.1", seed=5, recognizer=recognizer)
    image = photos["obama.jpg"]
    face = analyzer.detect(image)[0]
    aligned = encoder.aligned_face(image, face)
    assert aligned.shape == (512, 512, 3) and aligned.dtype == np.uint8
    tokens = encoder.encode([image], [face])
    assert tokens.num_photos == 1 and tokens.cond.shape == (1, 32, 64) and tokens.uncond.shape == (1, 32, 64)
    assert torch.isfinite(tokens.cond).all()
    # the same as the features of the FFHQ-aligned face and the raw embedding of the ArcFace crop
    embedding = encoder.embedding(image, face)
    assert embedding.shape == (512,)
    by_parts = encoder.id_tokens(encoder.features_from_aligned(aligned[None], embedding[None]))
    torch.testing.assert_close(tokens.cond, by_parts, rtol=1e-5, atol=1e-5)
    without = PuLIDEncoder("v1.1", encoder.id_encoder, encoder.tower, encoder.parser)
    with pytest.raises(ValueError, match="no antelopev2 recogniser"):
        without.encode([image], [face])


def test_ffhq_alignment_is_facexlibs_transform(analyzer, photos):
    import cv2

    from facestudio.faces.alignment import FFHQ, estimate_similarity

    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        landmarks = analyzer.detect(photos[name])[0].landmark_array().astype(np.float64)
        # facexlib's FaceRestoreHelper.align_warp_face: LMEDS "for the equivalence to skimage transform"
        facexlib = cv2.estimateAffinePartial2D(landmarks, FFHQ.at(512), method=cv2.LMEDS)[0]
        np.testing.assert_allclose(estimate_similarity(landmarks, FFHQ.at(512)), facexlib, rtol=1e-6, atol=1e-6)


def test_threads_share_one_encoder(shared):
    from conftest import run_in_threads

    encoders, photos, _ = shared
    alone = {v: e.id_tokens(photos[:2]) for v, e in encoders.items()}
    results = run_in_threads(lambda v: encoders[v].id_tokens(photos[:2]), list(encoders), repeats=2)
    for v, outputs in results.items():
        for out in outputs:
            torch.testing.assert_close(out, alone[v], rtol=0, atol=1e-6)


def test_the_encoder_needs_neither_timm_nor_torchvision():
    import subprocess
    import sys

    # a fresh interpreter: what the PuLID modules import, with tiny models built and run
    code = ("import sys, numpy as np\n"
            "from facestudio.guidance.pulid.encoder import tiny_pulid_encoder\n"
            "e = tiny_pulid_encoder('v1.1')\n"
            "e.features_from_aligned(np.zeros((1, 512, 512, 3), np.uint8), np.zeros((1, 512), np.float32))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'torchvision', 'open_clip')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
