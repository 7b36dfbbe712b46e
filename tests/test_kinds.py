"""Adapter kinds as objects: the registry, the layout check at load, the image encoders as pipeline components,
and the structure rules of issue 15 (no import circle, no `isinstance` on adapter configs outside the kinds)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facestudio.errors import ModelFileError
from facestudio.guidance import identity as idg
from facestudio.guidance import style as sty
from facestudio.guidance.kinds import KINDS, AdapterKind, kind_for, public_identity_kinds, register
from facestudio.guidance.public_identity import PublicIdentityConfig
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRC = Path(__file__).resolve().parents[1] / "src" / "facestudio"
CONFIG_CLASSES = {"AdapterConfig", "IdentityAdapterConfig", "PublicIdentityConfig", "StyleAdapterConfig"}


def _style_pipe(encoder=None):
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    encoder = encoder or sty.tiny_style_encoder()
    config = sty.StyleAdapterConfig(image_embed_dim=encoder.embed_dim, cross_attention_dim=64)
    pipe.load_adapters(style=sty.new_style_adapter(pipe.unet, config), style_config=config, style_encoder=encoder)
    return pipe


def test_every_config_finds_its_kind():
    assert {"facestudio", "ip-adapter", "faceid", "faceid-plus", "faceid-plusv2", "plus-face", "full-face",
            "faceid-portrait"} <= set(KINDS)
    assert kind_for(idg.IdentityAdapterConfig()).name == "facestudio"
    assert kind_for(sty.StyleAdapterConfig()).role == "style"
    for name, kind in public_identity_kinds().items():
        config = PublicIdentityConfig(projection=name, image_encoder="tiny" if kind.reads_detail else "")
        assert type(kind_for(config)) is kind and kind_for(config).config is config
    with pytest.raises(ModelFileError, match="unknown public identity projection 'nope'"):
        PublicIdentityConfig(projection="nope")
    with pytest.raises(ValueError, match="registered already"):
        register(type("Other", (AdapterKind,), {"name": "faceid"}))


def test_the_layout_check_names_the_first_wrong_key_and_shape():
    pipe = FaceStudioPipeline(**tiny_components())
    config = idg.IdentityAdapterConfig(cross_attention_dim=64)
    state = idg.new_identity_adapter(pipe.unet, config)
    kind = kind_for(config)
    kind.check_layout(state, pipe.unet, None, "x")  # facestudio's own adapter is its declared layout
    wrong = {"image_proj": state["image_proj"], "ip_adapter": {**state["ip_adapter"]}}
    wrong["ip_adapter"]["3.to_v_ip.weight"] = wrong["ip_adapter"]["3.to_v_ip.weight"][:, :-1]
    with pytest.raises(ModelFileError, match=r"ip_adapter.3.to_v_ip.weight has shape \[64, 63\], expected \[64, 64\]"):
        pipe.load_adapters(identity=wrong, identity_config=config)
    del wrong["ip_adapter"]["3.to_v_ip.weight"]
    with pytest.raises(ModelFileError, match=r"ip_adapter.3.to_v_ip.weight \[64, 64\] is missing"):
        kind.check_layout(wrong, pipe.unet, None, "x")
    extra = {"image_proj": {**state["image_proj"], "latents": torch.zeros(1, 16, 64)}, "ip_adapter": state["ip_adapter"]}
    with pytest.raises(ModelFileError, match=r"unexpected key image_proj.latents \[1, 16, 64\]"):
        kind.check_layout(extra, pipe.unet, None, "x")
    assert pipe.unet.encoder_hid_proj is None  # refused before diffusers loaded anything


def test_each_public_kind_layout_loads_as_its_projection_class(arcface_analyzer):
    """The layout each kind declares is what diffusers loads as that kind's projection."""
    pytest.importorskip("peft", minversion="0.17")
    clip = sty.tiny_style_encoder()
    for name, kind in public_identity_kinds().items():
        pipe = FaceStudioPipeline(**tiny_components())
        config = PublicIdentityConfig(projection=name, recognizer="arcface" if kind.reads_embedding else "",
                                      image_encoder="tiny" if kind.reads_detail else "", cross_attention_dim=64,
                                      lora_rank=4)
        layout = kind_for(config).layout(pipe.unet, clip)
        flat = {k: torch.randn(shape) * 0.1 for k, shape in layout.items()}
        state = {part: {k.removeprefix(part + "."): v for k, v in flat.items() if k.startswith(part + ".")}
                 for part in ("image_proj", "ip_adapter")}
        pipe.load_adapters(identity=state, identity_config=config, identity_encoder=clip if kind.reads_detail else None,
                           face_analyzer=arcface_analyzer)
        assert isinstance(pipe._projection(pipe.facestudio_adapters[0]), kind.projection_class), name


def test_image_encoders_are_pipeline_components_that_move(tmp_path):
    encoder = sty.tiny_style_encoder()
    pipe = _style_pipe(encoder)
    assert pipe.components["style_image_encoder"] is encoder.model and pipe.components["identity_image_encoder"] is None
    pipe.to(torch.float16)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.float16}
    assert pipe.image_encoder_for("style").embeds([np.zeros((32, 32, 3), np.uint8)]).dtype == torch.float16
    pipe.to(torch.float32)
    # model CPU offload puts a hook on the encoder like on every other model (CPU as the "accelerator" here)
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(encoder.model, "_hf_hook")
    out = pipe("a photo", style_image=sty.Image.new("RGB", (32, 32), (200, 30, 30)), height=64, width=64,
               num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(out).all()
    pipe.remove_all_hooks()
    # save_pretrained / from_pretrained keep the encoder as a component
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["style_image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    again = FaceStudioPipeline.from_pretrained(tmp_path)
    assert torch.equal(again.style_image_encoder.visual_projection.weight, encoder.model.visual_projection.weight)
    assert again.image_encoder_for("style").embeds([np.zeros((32, 32, 3), np.uint8)]).shape == (1, encoder.embed_dim)


def test_adapters_loaded_after_offload_get_their_encoders_hooked():
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.enable_model_cpu_offload(device="cpu")
    encoder = sty.tiny_style_encoder()
    config = sty.StyleAdapterConfig(image_embed_dim=encoder.embed_dim, cross_attention_dim=64)
    pipe.load_adapters(style=sty.new_style_adapter(pipe.unet, config), style_config=config, style_encoder=encoder)
    assert hasattr(encoder.model, "_hf_hook")
    pipe.remove_all_hooks()


def test_unloading_takes_the_encoders_too():
    pipe = _style_pipe()
    pipe.unload_adapters()
    assert pipe.style_image_encoder is None and pipe.image_encoder_for("style") is None
    assert pipe.unet.encoder_hid_proj is None and pipe.facestudio_adapters == ()


def _imports(path: Path) -> set[str]:
    """Modules of the package a file imports, anywhere in it (function-level imports count too)."""
    tree, found = ast.parse(path.read_text()), set()
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            found.add(f"{base}.{node.module}" if node.module else base)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_models_and_presets_do_not_import_each_other():
    assert "facestudio.presets" not in _imports(SRC / "models.py")
    assert "facestudio.models" in _imports(SRC / "presets.py")  # the one direction


def test_no_isinstance_on_adapter_configs_outside_the_kinds():
    offenders = []
    for path in SRC.rglob("*.py"):
        if "kinds" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])}
                if names & CONFIG_CLASSES:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
