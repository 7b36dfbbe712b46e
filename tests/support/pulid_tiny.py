"""Tiny SDXL-shaped models for the PuLID tests, built in code with the real token and feature widths.

The UNet has SDXL's structure at a tiny size: a first level without attention, then two levels of
cross-attention (the second with two transformer layers), the cross-attention mid block, several heads per
layer, and cross-attention reading 2048-wide tokens (SDXL's width: its two text encoders' 768 + 1280, and the
width of PuLID's ID tokens). `random_pulid_checkpoint` gives random weights in the published layout of
`pulid_v1.bin` / `pulid_v1.1.safetensors` (`id_adapter_attn_layers.{i}.id_to_k.weight` ... for this UNet).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from facestudio.models import MAX_PROMPT_TOKENS, _tiny_vae, sd15_scheduler, tiny_tokenizer

#: SDXL's text encoder widths (CLIP ViT-L and OpenCLIP bigG); concatenated, the UNet's cross-attention width.
TEXT_WIDTHS = (768, 1280)
CROSS_DIM = sum(TEXT_WIDTHS)
TIME_DIM = 8


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 2),
            cross_attention_dim=CROSS_DIM, attention_head_dim=(2, 2, 4), norm_num_groups=8,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
            projection_class_embeddings_input_dim=TEXT_WIDTHS[1] + 6 * TIME_DIM,
        ).eval()


def _text_config(tokenizer, width: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, max_position_embeddings=MAX_PROMPT_TOKENS,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_pulid_components(seed: int = 0) -> dict:
    """`StableDiffusionXLPipeline(**components)` (and `FaceStudioXLPipeline`) at 64x64 with the tiny SDXL UNet."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_WIDTHS[0]))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, TEXT_WIDTHS[1],
                                                                  projection_dim=TEXT_WIDTHS[1]))
    return {"unet": tiny_sdxl_unet(seed), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": tokenizer, "text_encoder_2": text_encoder_2.eval(), "tokenizer_2": tiny_tokenizer(),
            "scheduler": sd15_scheduler(), "image_encoder": None, "feature_extractor": None}


def tiny_id_encoder_state(version: str = "v1", seed: int = 3) -> dict:
    """Random weights of PuLID's ID encoder of `version` at test widths (`PuLIDConfig(sizes="tiny")`), with
    tokens 2048 wide, in the checkpoint's names (without the `id_adapter.` prefix)."""
    from facestudio.guidance.kinds.pulid import PuLIDConfig
    from facestudio.guidance.pulid.idformer import build_id_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_id_encoder(PuLIDConfig(version=version, sizes="tiny").encoder_sizes()[0])
        generator = torch.Generator().manual_seed(seed)
        return {k: torch.randn(v.shape, generator=generator) * 0.1 if v.is_floating_point() else v
                for k, v in module.state_dict().items()}


def random_pulid_checkpoint(unet, seed: int = 1, scale: float = 0.05, version: str = "v1") -> dict:
    """A flat state dict in the published PuLID layout for `unet`: `id_adapter_attn_layers.{i}.id_to_{k,v}.weight`
    for each cross-attention processor index i of the full processor list (random, `scale` wide), and the tiny ID
    encoder of `version` under `id_adapter.`."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            for part in ("id_to_k", "id_to_v"):
                shape = (attn.to_k.out_features, attn.to_k.in_features)
                state[f"id_adapter_attn_layers.{index}.{part}.weight"] = torch.randn(shape, generator=generator) * scale
    for key, value in tiny_id_encoder_state(version, seed + 100).items():
        state[f"id_adapter.{key}"] = value
    return state


def random_id_tokens(people: int, seed: int = 2, photos: int = 1, tokens: int = 10) -> torch.Tensor:
    """`[people, photos, tokens, 2048]` random ID tokens of the real width, standing in for the ID encoder
    (10 tokens per photo: PuLID v1's; 32: v1.1's)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(people, photos, tokens, CROSS_DIM, generator=generator)


def tiny_pulid_files(folder, version: str = "v1", seed: int = 5) -> dict:
    """The encoder's files at test widths in their published names and layouts: `EVA02_CLIP_L_336_psz14_s6B.pt`
    (eva_clip's `visual.*` names), `parsing_bisenet.pth` (facexlib's) and `glintr100.onnx` (a tiny ArcFace
    network exported to ONNX). Returns `{"eva_clip", "bisenet", "antelopev2"}` paths for `PuLIDConfig`."""
    from pathlib import Path

    from test_arcface import _export, _tiny_arcface

    from facestudio.guidance.pulid.encoder import tiny_pulid_encoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = tiny_pulid_encoder(version, seed=seed)
    paths = {"eva_clip": folder / "EVA02_CLIP_L_336_psz14_s6B.pt", "bisenet": folder / "parsing_bisenet.pth",
             "antelopev2": folder / "antelopev2" / "glintr100.onnx"}
    torch.save(eva_clip_layout(encoder.tower.model.state_dict()), paths["eva_clip"])
    torch.save(encoder.parser.model.state_dict(), paths["bisenet"])
    paths["antelopev2"].parent.mkdir(exist_ok=True)
    _export(_tiny_arcface(seed), paths["antelopev2"])
    return {k: str(v) for k, v in paths.items()}


#: timm's names of EVA's parts -> eva_clip's (the inverse of timm's `eva.checkpoint_filter_fn` renames).
_EVA_CLIP_NAMES = (("mlp.norm.", "mlp.ffn_ln."), ("attn.norm.", "attn.inner_attn_ln."), ("mlp.fc1_g.", "mlp.w1."),
                   ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3."), ("attn.q_proj.bias", "attn.q_bias"),
                   ("attn.v_proj.bias", "attn.v_bias"))


def eva_clip_layout(timm_state: dict) -> dict:
    """A timm EVA state dict in the published EVA-CLIP checkpoint's names (`visual.` + eva_clip's module names)."""
    out = {}
    for key, value in timm_state.items():
        for theirs, published in _EVA_CLIP_NAMES:
            key = key.replace(theirs, published)
        out[f"visual.{key}"] = value
    return out
