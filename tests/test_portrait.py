"""IP-Adapter-FaceID-Portrait, the kind added as one class plus one preset row: several photos of one person
enter attention side by side (16 tokens each, one softmax), as it was trained, not averaged.

The oracle is stock diffusers' own formulation of the reference (tencent-ailab `ip_adapter_faceid_separate.py`,
`n_cond` faces): the checkpoint loaded with `load_ip_adapter`, the N photos' normed ArcFace embeddings given as N
images of the one adapter (`ip_adapter_image_embeds` `[2, N, 512]`: [zeros; embeddings]), whose
`IPAdapterFaceIDImageProjection` makes 16 tokens per photo and whose processor concatenates them along the
token axis. Random weights in the public layout; tiny ArcFace and tiny UNet; real photos; nothing downloaded.
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
from facestudio.guidance import public_layouts as layouts
from facestudio.guidance.kinds import KINDS, FaceIDPortraitKind, kind_for
from facestudio.guidance.public_identity import PublicIdentityConfig
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput
from facestudio.presets import PRESETS

pytest.importorskip("peft", minversion="0.17")
pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")]

CONFIG = PublicIdentityConfig(projection="faceid-portrait", recognizer="arcface", cross_attention_dim=64)
OBAMA = ("obama.jpg", "obama2.jpg", "obama3.jpg")
SIZE = dict(height=64, width=64, num_inference_steps=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A folder with a random `portrait.safetensors` in the published layout (16 tokens, no LoRA) and a FaceID
    file (4 tokens, LoRA) beside it."""
    folder = tmp_path_factory.mktemp("portrait")
    unet = tiny_components()["unet"]
    for seed, (name, layout) in enumerate({"portrait": layouts.faceid(unet, lora_rank=0, num_tokens=16),
                                           "faceid": layouts.faceid(unet, lora_rank=4)}.items()):
        generator = torch.Generator().manual_seed(seed)
        save_file({k: 0.2 * torch.randn(shape, generator=generator) for k, shape in layout.items()},
                  str(folder / f"{name}.safetensors"))
    return folder


@pytest.fixture(scope="module")
def pipe(checkpoint, arcface_analyzer):
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_public_adapters((str(checkpoint), "portrait.safetensors", None), identity_config=CONFIG,
                              face_analyzer=arcface_analyzer)
    return pipe


@pytest.fixture(scope="module")
def stock(checkpoint):
    stock = StableDiffusionPipeline(**{k: v for k, v in tiny_components().items() if k != "image_encoder"})
    stock.set_progress_bar_config(disable=True)
    stock.load_ip_adapter(str(checkpoint), subfolder="", weight_name="portrait.safetensors", image_encoder_folder=None)
    stock.set_ip_adapter_scale(1.0)
    return stock


def test_one_class_and_one_preset_row():
    assert KINDS["faceid-portrait"] is FaceIDPortraitKind
    preset = PRESETS["faceid-portrait-sd15"]
    assert preset.adapter.filename == "ip-adapter-faceid-portrait_sd15.bin" and preset.recognizer == "arcface"
    assert isinstance(kind_for(PublicIdentityConfig(projection=preset.projection)), FaceIDPortraitKind)


def test_photos_side_by_side_equal_stock_diffusers(pipe, stock, faces_dir):
    """N photos -> N x 16 tokens; through the UNet they equal diffusers fed the N embeddings as N images."""
    (person,) = pipe.encode_identities([IdentityInput(photos=tuple(faces_dir / p for p in OBAMA))], None)
    assert person.detail.shape == (3, 512) and person.num_photos == 3
    assert np.allclose(np.linalg.norm(person.detail, axis=1), 1.0, atol=1e-5)
    tokens = pipe.identity_tokens([person], batch=1, rows=GuidanceRows(TWO_WAY))  # [2, 1, 48, 64]: [no reference; person]
    assert tokens.shape == (2, 1, 3 * 16, 64)
    embeds = torch.from_numpy(person.detail)[None]  # [1, N, 512]: N images of the one adapter
    ours, theirs = unet_output(pipe, [tokens[1:]]), unet_output(stock, [embeds])
    assert (ours - theirs).abs().max() < 1e-5
    # not the average: the mean embedding's 16 tokens give another output
    mean = torch.from_numpy(person.embedding)[None, None]
    assert (ours - unet_output(stock, [mean])).abs().max() > 1e-4


def test_images_equal_the_reference_pipeline(pipe, stock, faces_dir):
    """With equal text and reference scales, three-way guidance is stock CFG on (no text, zeros) vs (text, photos):
    the reference's unconditional input is N zero embeddings, ours one (the same attention: repeated tokens)."""
    (person,) = pipe.encode_identities([IdentityInput(photos=tuple(faces_dir / p for p in OBAMA))], None)
    embeds = torch.from_numpy(person.detail)[None]
    kw = dict(output_type="np", **SIZE)
    theirs = stock("a portrait", ip_adapter_image_embeds=[torch.cat([torch.zeros_like(embeds), embeds])],
                   guidance_scale=7.5, generator=torch.Generator().manual_seed(0), **kw).images
    ours = pipe("a portrait", identities=[IdentityInput(identity=person)], text_guidance_scale=7.5,
                reference_guidance_scale=7.5, generator=torch.Generator().manual_seed(0), **kw).images
    assert np.abs(ours - theirs).max() < 1e-4
    one_photo = pipe("a portrait", identities=[IdentityInput(photos=(faces_dir / OBAMA[0],))],
                     generator=torch.Generator().manual_seed(0), **kw).images
    assert np.abs(ours - one_photo).max() > 1e-4


def test_people_with_different_photo_counts_in_regions(pipe, faces_dir):
    """Two identities of 3 and 1 photos: 48 and 16 tokens, repeated to one length without changing attention."""
    obama, biden = pipe.encode_identities([IdentityInput(photos=tuple(faces_dir / p for p in OBAMA)),
                                           IdentityInput(photos=(faces_dir / "biden.jpg",))], None)
    tokens = pipe.identity_tokens([obama, biden], batch=1, rows=GuidanceRows(TWO_WAY))
    assert tokens.shape == (2, 2, 48, 64)
    alone = pipe.identity_tokens([biden], batch=1, rows=GuidanceRows(TWO_WAY))  # 16 tokens
    assert (unet_output(pipe, [tokens[1:, 1:]]) - unet_output(pipe, [alone[1:]])).abs().max() < 1e-5

    def run(*people):
        return pipe("two people", identities=list(people), generator=torch.Generator().manual_seed(0),
                    output_type="np", **SIZE).images

    left, right = (0, 0, 32, 64), (32, 0, 64, 64)
    both = run(IdentityInput(identity=obama, region=left), IdentityInput(identity=biden, region=right))
    silent = run(IdentityInput(identity=obama, region=left), IdentityInput(identity=biden, region=right, strength=0))
    only = run(IdentityInput(identity=obama, region=left))
    assert np.abs(silent - only).max() < 1e-5 and np.abs(both - only).max() > 1e-4


def test_a_faceid_file_is_refused_as_portrait(checkpoint, arcface_analyzer):
    pipe = FaceStudioPipeline(**tiny_components())
    with pytest.raises(ModelFileError, match=r"faceid.safetensors does not fit this UNet as a faceid-portrait "
                                             r"adapter: image_proj.proj.2.weight has shape \[256, 1024\], "
                                             r"expected \[1024, 1024\]"):
        pipe.load_public_adapters((str(checkpoint), "faceid.safetensors", None), identity_config=CONFIG,
                                  face_analyzer=arcface_analyzer)
    assert pipe.unet.encoder_hid_proj is None


def test_the_preset_row_loads_the_published_file_name_from_the_hub_cache(empty_hub, tmp_path, faces_dir):
    """`load_preset_pipeline("faceid-portrait-sd15")` with the `.bin` (a nested pickle, as published) in the cache."""
    from test_arcface import _export, _tiny_arcface
    from conftest import cache_file

    from facestudio.presets import load_preset_pipeline

    base = tmp_path / "tiny-base"
    FaceStudioPipeline(**tiny_components()).save_pretrained(base)
    generator = torch.Generator().manual_seed(0)
    flat = {k: 0.2 * torch.randn(shape, generator=generator)
            for k, shape in layouts.faceid(tiny_components()["unet"], lora_rank=0, num_tokens=16).items()}
    nested = {part: {k.removeprefix(part + "."): v for k, v in flat.items() if k.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    cache_file(empty_hub, "h94/IP-Adapter-FaceID", "ip-adapter-faceid-portrait_sd15.bin",
                lambda path: torch.save(nested, path))
    arcface = _export(_tiny_arcface(0), tmp_path / "w600k_r50.onnx")
    pipe = load_preset_pipeline("faceid-portrait-sd15", base_model=str(base), arcface_model=arcface)
    pipe.set_progress_bar_config(disable=True)
    (person,) = pipe.encode_identities([IdentityInput(photos=(faces_dir / OBAMA[0], faces_dir / OBAMA[1]))], None)
    assert pipe.identity_tokens([person], batch=1, rows=GuidanceRows(TWO_WAY)).shape == (2, 1, 32, 64)
    image = pipe("a portrait", identities=[IdentityInput(identity=person)], output_type="np",
                 generator=torch.Generator().manual_seed(0), **SIZE).images
    assert np.isfinite(image).all()
