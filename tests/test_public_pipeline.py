"""Public IP-Adapter checkpoints inside FaceStudioPipeline: tokens as stock diffusers computes them, the right
"no reference" input per kind, and regions, strengths, mixing and style block scales on top.

Checkpoints are random, in the public layouts of the tiny UNet (`public_layouts`); ArcFace is a tiny ONNX
network exported from torch (as in test_arcface.py), CLIP the tiny vision model. Faces are real detections on
the real photos. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from conftest import unet_output
from facestudio.errors import ModelFileError
from facestudio.guidance.cfg import TWO_WAY, GuidanceRows
from facestudio.guidance import public_identity as pid
from facestudio.guidance import public_layouts as layouts
from facestudio.guidance import style as sty
from facestudio.guidance.kinds import public_identity_kinds
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput

pytest.importorskip("peft", minversion="0.17")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")

CLIP = sty.tiny_style_encoder()
PUBLIC_KINDS = [k for k in public_identity_kinds() if k != "faceid-portrait"]  # Portrait: test_portrait.py
CLIP_DIM = CLIP.model.config.hidden_size  # 32: the tiny stand-in for ViT-H's 1280
SIZE = dict(height=64, width=64, num_inference_steps=2)


def _layout(kind: str, unet):
    if kind == "faceid":
        return layouts.faceid(unet, lora_rank=4)
    if kind in ("faceid-plus", "faceid-plusv2"):
        return layouts.faceid_plus(unet, lora_rank=4, clip_dim=CLIP_DIM)
    if kind == "plus-face":
        return layouts.plus_face(unet, clip_dim=CLIP_DIM)
    if kind == "full-face":
        return layouts.full_face(unet, clip_dim=CLIP_DIM)
    return layouts.base(unet, clip_dim=CLIP.embed_dim)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """`kind -> folder` with a random flat `<kind>.safetensors` each (LoRA up-weights non-zero)."""
    folder = tmp_path_factory.mktemp("public")
    unet = tiny_components()["unet"]
    for i, kind in enumerate([*PUBLIC_KINDS, "ip-adapter"]):
        generator = torch.Generator().manual_seed(i)
        state = {k: 0.2 * torch.randn(shape, generator=generator) for k, shape in _layout(kind, unet).items()}
        save_file(state, str(folder / f"{kind}.safetensors"))
    return folder


def _config(kind: str) -> pid.PublicIdentityConfig:
    reads = public_identity_kinds()[kind]
    return pid.PublicIdentityConfig(projection=kind, recognizer="arcface" if reads.reads_embedding else "",
                                    image_encoder="tiny" if reads.reads_detail else "", cross_attention_dim=64,
                                    lora_rank=4)


def _pipe(kind, checkpoints, analyzer, style=None) -> FaceStudioPipeline:
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if style is not None:
        kwargs = dict(style=(str(checkpoints), "ip-adapter.safetensors", None), style_config=style)
    pipe.load_public_adapters((str(checkpoints), f"{kind}.safetensors", None), identity_config=_config(kind),
                              face_analyzer=analyzer, **kwargs)
    return pipe


def _stock(kind, checkpoints) -> StableDiffusionPipeline:
    stock = StableDiffusionPipeline(**{k: v for k, v in tiny_components().items() if k != "image_encoder"})
    stock.load_ip_adapter(str(checkpoints), subfolder="", weight_name=f"{kind}.safetensors", image_encoder_folder=None)
    return stock


@pytest.mark.parametrize("kind", PUBLIC_KINDS)
def test_unet_output_equals_stock_diffusers(kind, checkpoints, arcface_analyzer, faces_dir):
    """Photo -> facestudio's tokens -> UNet equals stock diffusers fed the same encoder outputs the documented way."""
    pipe = _pipe(kind, checkpoints, arcface_analyzer)
    (identity,) = pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",))], None)
    tokens = pipe.identity_tokens([identity], batch=1, rows=GuidanceRows(TWO_WAY))[1:]  # [1, 1, T, D]: the identity row
    stock = _stock(kind, checkpoints)
    projection = stock.unet.encoder_hid_proj.image_projection_layers[0]
    embedding = torch.from_numpy(identity.embedding)[None, None]
    detail = torch.from_numpy(identity.detail)[None, None]
    if kind.startswith("faceid-plus"):
        projection.clip_embeds, projection.shortcut = detail, kind == "faceid-plusv2"
    embeds = embedding if kind.startswith("faceid") else detail
    assert torch.allclose(unet_output(pipe, [tokens]), unet_output(stock, [embeds]), atol=1e-5)
    if kind.startswith("faceid"):  # and the FaceID LoRA is active: without it the output changes
        stock.disable_lora()
        assert (unet_output(pipe, [tokens]) - unet_output(stock, [embeds])).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["faceid", "plus-face"])
def test_no_reference_input_per_kind(kind, checkpoints, arcface_analyzer):
    """FaceID's "no reference" is a zero embedding; a CLIP branch's is CLIP's output on a blank image."""
    pipe = _pipe(kind, checkpoints, arcface_analyzer)
    projection = pipe._projection(pipe.facestudio_adapters[0])
    null = pipe.identity_tokens([], batch=1, rows=GuidanceRows(TWO_WAY))[0, 0]
    with torch.no_grad():
        if kind == "faceid":
            expected = projection(torch.zeros(1, 512))[0]
        else:
            expected = projection(CLIP.blank_hidden_states())[0]
            assert (null - projection(torch.zeros(1, 17, CLIP_DIM))[0]).abs().max() > 1e-3
    assert torch.allclose(null, expected, atol=1e-6)


def test_regions_strengths_and_mixing(checkpoints, arcface_analyzer, faces_dir):
    pipe = _pipe("faceid-plusv2", checkpoints, arcface_analyzer)
    obama, biden = pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg", faces_dir / "obama2.jpg")),
                                           IdentityInput(photos=(faces_dir / "biden.jpg",))], None)
    assert obama.num_photos == 2 and obama.embedding.shape == (512,)

    def run(*people, **kw):
        return pipe("two people", identities=list(people), generator=torch.Generator().manual_seed(0),
                    output_type="np", **SIZE, **kw).images

    left, right = (0, 0, 32, 64), (32, 0, 64, 64)
    alone = run(IdentityInput(identity=obama, region=left))
    with_silent_other = run(IdentityInput(identity=obama, region=left),
                            IdentityInput(identity=biden, region=right, strength=0.0))
    assert np.abs(alone - with_silent_other).max() < 1e-5
    both = run(IdentityInput(identity=obama, region=left), IdentityInput(identity=biden, region=right))
    swapped = run(IdentityInput(identity=biden, region=left), IdentityInput(identity=obama, region=right))
    assert np.abs(both - swapped).max() > 1e-3
    half = run(IdentityInput(identity=obama), IdentityInput(identity=biden), mix=[0.5, 0.5])
    assert np.isfinite(half).all() and np.abs(half - run(IdentityInput(identity=obama))).max() > 1e-4


def test_style_block_scales_keep_style_out_of_the_zeroed_blocks(checkpoints, arcface_analyzer, faces_dir):
    style_image = np.asarray(sty.Image.open(faces_dir / "biden.jpg").convert("RGB"))

    def style_effect(block_scales) -> float:
        config = sty.StyleAdapterConfig(image_encoder="tiny", image_embed_dim=CLIP.embed_dim, cross_attention_dim=64,
                                        block_scales=block_scales)
        pipe = _pipe("faceid", checkpoints, arcface_analyzer, style=config)
        run = [pipe("a portrait", style_image=image, generator=torch.Generator().manual_seed(0), output_type="np",
                    **SIZE).images for image in (None, sty.Image.fromarray(style_image))]
        return float(np.abs(run[0] - run[1]).max())

    everywhere = style_effect(None)
    one_layer = style_effect({"down": 0.0, "mid": 0.0, "up": {"block_1": [0.0, 1.0]}})
    assert everywhere > 1e-3 and 1e-6 < one_layer and abs(one_layer - everywhere) > 1e-6
    with pytest.raises(ModelFileError, match="switch it off in every layer"):
        style_effect({"down": 0.0, "mid": 0.0, "up": 0.0})


def test_wrong_recogniser_and_wrong_file_are_refused(checkpoints, arcface_analyzer, analyzer):
    with pytest.raises(ModelFileError, match="needs the 'arcface' face recogniser"):
        _pipe("faceid", checkpoints, analyzer)  # the default analyzer recognises with dlib
    pipe = FaceStudioPipeline(**tiny_components())
    with pytest.raises(ModelFileError, match=r"plus-face.safetensors does not fit this UNet as a full-face adapter: "
                                             r"image_proj.proj.0.weight \[32, 32\] is missing"):
        pipe.load_public_adapters((str(checkpoints), "plus-face.safetensors", None),
                                  identity_config=_config("full-face"), face_analyzer=arcface_analyzer)
    assert pipe.unet.encoder_hid_proj is None and not pipe.get_list_adapters().get("unet")


def test_sdxl_faceid_matches_stock_and_keeps_regions(tmp_path, arcface_analyzer, faces_dir):
    """The SDXL pipeline: FaceID tokens + pooled text + size conditioning equal stock SDXL; regions still act."""
    from diffusers import StableDiffusionXLPipeline

    from facestudio.models import tiny_xl_components
    from facestudio.pipeline_xl import FaceStudioXLPipeline

    unet = tiny_xl_components()["unet"]
    generator = torch.Generator().manual_seed(5)
    save_file({k: 0.2 * torch.randn(shape, generator=generator)
               for k, shape in layouts.faceid(unet, lora_rank=4).items()}, str(tmp_path / "faceid.safetensors"))
    pipe = FaceStudioXLPipeline(**tiny_xl_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_public_adapters((str(tmp_path), "faceid.safetensors", None), identity_config=_config("faceid"),
                              face_analyzer=arcface_analyzer)
    obama, biden = pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",)),
                                           IdentityInput(photos=(faces_dir / "biden.jpg",))], None)

    stock = StableDiffusionXLPipeline(**tiny_xl_components())
    stock.set_progress_bar_config(disable=True)
    stock.load_ip_adapter(str(tmp_path), subfolder="", weight_name="faceid.safetensors", image_encoder_folder=None)
    stock.set_ip_adapter_scale(1.0)
    embeds = torch.from_numpy(np.stack([np.zeros(512, np.float32), obama.embedding]))[:, None, None]  # [neg; pos]
    kw = dict(height=64, width=64, num_inference_steps=2, output_type="np", guidance_scale=7.5)
    theirs = stock("a photo", ip_adapter_image_embeds=[embeds], generator=torch.Generator().manual_seed(0), **kw).images
    ours = pipe("a photo", identities=[IdentityInput(identity=obama)], text_guidance_scale=7.5,
                reference_guidance_scale=7.5, generator=torch.Generator().manual_seed(0), height=64, width=64,
                num_inference_steps=2, output_type="np").images
    # equal scales: three-way guidance is the two-way guidance of (no text, no id) vs (text, id)
    assert np.abs(ours - theirs).max() < 1e-4

    def run(*people):
        return pipe("two people", identities=list(people), generator=torch.Generator().manual_seed(0), height=64,
                    width=64, num_inference_steps=2, output_type="np").images

    left, right = (0, 0, 32, 64), (32, 0, 64, 64)
    both = run(IdentityInput(identity=obama, region=left), IdentityInput(identity=biden, region=right))
    swapped = run(IdentityInput(identity=biden, region=left), IdentityInput(identity=obama, region=right))
    assert np.abs(both - swapped).max() > 1e-3


def test_sdxl_float16_vae_runs_in_float32_safely_across_threads():
    """SDXL's VAE is cast to float32 for each decode; concurrent calls never meet it half cast."""
    from conftest import run_in_threads
    from facestudio.models import tiny_xl_components
    from facestudio.pipeline_xl import FaceStudioXLPipeline

    pipe = FaceStudioXLPipeline(**tiny_xl_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.to(torch.float16)
    assert pipe.vae.config.force_upcast

    def work(seed):
        return pipe("a photo", generator=torch.Generator().manual_seed(seed), height=64, width=64,
                    num_inference_steps=1, output_type="np").images

    alone = {seed: work(seed) for seed in (0, 1)}
    results = run_in_threads(work, [0, 1], repeats=3)
    assert all(np.array_equal(image, alone[seed]) for seed, images in results.items() for image in images)
    assert pipe.vae.dtype == torch.float16


@pytest.mark.parametrize("xl", [False, True], ids=["sd15", "sdxl"])
def test_prompt_encoding_is_safe_across_threads(xl):
    """A tokenizer's padding setting is state: without the pipeline's lock, one of 1,200 concurrent encodings
    here met another's "longest" padding (8 tokens instead of 77: the size mismatch once seen under load)."""
    from facestudio.models import tiny_components, tiny_xl_components
    from facestudio.pipeline import FaceStudioPipeline
    from facestudio.pipeline_xl import FaceStudioXLPipeline

    pipe = (FaceStudioXLPipeline(**tiny_xl_components()) if xl else FaceStudioPipeline(**tiny_components()))
    alone = pipe.encode_text(["a photo"], None, torch.device("cpu"), 1, GuidanceRows(TWO_WAY), 64, 64)[0]
    assert alone.shape[1] == 77

    def work(_):
        return [pipe.encode_text(["a photo"], None, torch.device("cpu"), 1, GuidanceRows(TWO_WAY), 64, 64)[0] for _ in range(300)]

    from conftest import run_in_threads
    results = run_in_threads(work, [0, 1, 2, 3], repeats=1)
    assert all(torch.equal(text, alone) for runs in results.values() for text in runs[0])
