"""The reference PuLID attention (ToTheBeginning/PuLID `pulid/attention_processor.py`) on a tiny SDXL UNet: the
oracle for facestudio's `guidance/pulid/attention.py`. Test support only: never imported by the package.

The reference file is read from `$PULID_REFERENCE/pulid/attention_processor.py` (a checkout), else from the
fetched mirror (`/work/.mirror/ToTheBeginning+PuLID/repo`, a bare git directory; `$PULID_REFERENCE_GIT`
names another). Only that one module is imported (it needs nothing but torch). The reference's own setup,
`PuLIDPipeline.hack_unet_attn_layers` and `load_pretrain` (`pulid/pipeline.py`), cannot be imported without
insightface, facexlib and a GPU, so `reference_unet` re-enacts their few lines: `IDAttnProcessor2_0` on every
cross-attention layer, `AttnProcessor2_0` on the others, the checkpoint's `id_adapter_attn_layers.*` loaded
strictly into `nn.ModuleList(unet.attn_processors.values())`. A mode is the demos' module globals
(`app.py`: `NUM_ZERO`, `ORTHO`, `ORTHO_v2`).

    python tests/support/pulid_unet_reference.py   # prints the max difference per version and mode
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

MIRROR = Path(os.environ.get("PULID_REFERENCE_GIT", "/work/.mirror/ToTheBeginning+PuLID/repo"))
REFERENCE_FILE = "pulid/attention_processor.py"


def reference_source() -> tuple[str | None, str]:
    """`(source text, where from)` of the reference module, or `(None, why not)`."""
    checkout = os.environ.get("PULID_REFERENCE")
    if checkout:
        path = Path(checkout) / REFERENCE_FILE
        return (path.read_text(), str(path)) if path.is_file() else (None, f"{path} does not exist")
    if not MIRROR.is_dir():
        return None, f"the PuLID reference is not fetched ({MIRROR}; or set PULID_REFERENCE to a checkout)"
    done = subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"HEAD:{REFERENCE_FILE}"], capture_output=True,
                          text=True)
    if done.returncode:
        return None, f"{MIRROR} has no {REFERENCE_FILE}: {done.stderr.strip()}"
    return done.stdout, f"{MIRROR}:{REFERENCE_FILE}"


def load_reference():
    """The reference `attention_processor` module (a fresh module object: its globals are the mode)."""
    source, origin = reference_source()
    if source is None:
        raise FileNotFoundError(origin)
    folder = Path(tempfile.mkdtemp(prefix="pulid-reference-"))
    path = folder / "pulid_attention_processor.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pulid_attention_processor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_mode(module, num_zero: int, ortho: str) -> None:
    """The reference demos' way of choosing a mode: its module globals."""
    module.NUM_ZERO = num_zero
    module.ORTHO = ortho == "v1"
    module.ORTHO_v2 = ortho == "v2"


def reference_unet(module, unet, flat_state: dict):
    """A copy of `unet` with the reference processors and the checkpoint's ID attention (pulid/pipeline.py)."""
    unet = copy.deepcopy(unet)
    processors = {}
    for name in unet.attn_processors:
        cross_attention_dim = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden_size = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden_size = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden_size = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        processors[name] = (module.IDAttnProcessor2_0(hidden_size=hidden_size, cross_attention_dim=cross_attention_dim)
                            if cross_attention_dim is not None else module.AttnProcessor2_0())
    unet.set_attn_processor(processors)
    layers = nn.ModuleList(unet.attn_processors.values())
    prefix = "id_adapter_attn_layers."
    layers.load_state_dict({k[len(prefix):]: v for k, v in flat_state.items() if k.startswith(prefix)}, strict=True)
    return unet


def unet_inputs(unet, batch: int = 2, seed: int = 4) -> dict:
    """Random latents, text (2048 wide, 77 tokens) and SDXL's added conditions for one step."""
    generator = torch.Generator().manual_seed(seed)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"sample": torch.randn(batch, 4, 8, 8, generator=generator), "timestep": 500,
            "encoder_hidden_states": torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator),
            "added_cond_kwargs": {"text_embeds": torch.randn(batch, pooled, generator=generator),
                                  "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)}}


def compare(version: str, mode: str, id_scale: float = 0.8) -> dict:
    """Both UNets on the same inputs and ID tokens: `{"max_diff", "id_effect"}` (the second: how much the ID
    attention moves the output, so that an equality cannot come from the ID attention doing nothing)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pulid_tiny import random_id_tokens, random_pulid_checkpoint, tiny_pulid_components

    from facestudio.attention import LayerMasks, RegionMasks
    from facestudio.guidance.kinds.pulid import TOKENS_PER_PHOTO, PuLIDConfig, identity_from_tokens, split_checkpoint
    from facestudio.pipeline_xl import FaceStudioXLPipeline

    reference = load_reference()
    pipe = FaceStudioXLPipeline(**tiny_pulid_components())
    flat = random_pulid_checkpoint(pipe.unet, seed=1, version=version)
    config = PuLIDConfig(version=version, mode=mode, sizes="tiny")
    base = copy.deepcopy(pipe.unet)
    pipe.load_adapters(identity=split_checkpoint(flat, "random"), identity_config=config)
    set_mode(reference, config.effective_num_zero, config.effective_ortho)
    theirs = reference_unet(reference, base, flat)

    adapter = pipe.facestudio_adapters[0]
    kind, projection = adapter.adapter_kind, pipe._projection(adapter)
    # row 0: the "no identity" tokens (here random too: the encoder's uncond is not zeros), row 1: a person
    raw = random_id_tokens(2, seed=2, tokens=TOKENS_PER_PHOTO[version])[:, 0]
    identities = [identity_from_tokens(raw[i], kind.signature) for i in range(2)]
    ours_tokens = torch.stack([kind.tokens(projection, i) for i in identities])[:, None]  # [2, 1, T + nz, D]
    inputs = unet_inputs(pipe.unet)
    masks = LayerMasks((RegionMasks.full(1, id_scale),), (8, 8))
    with torch.no_grad():
        ours = pipe.unet(**{**inputs, "added_cond_kwargs": {**inputs["added_cond_kwargs"], "image_embeds": [ours_tokens]}},
                         cross_attention_kwargs={"ip_adapter_masks": masks}).sample
        ref = theirs(**inputs, cross_attention_kwargs={"id_embedding": raw, "id_scale": id_scale}).sample
        plain = base(**inputs).sample
    return {"max_diff": float((ours - ref).abs().max()), "id_effect": float((ref - plain).abs().max()),
            "num_zero": config.effective_num_zero, "ortho": config.effective_ortho}


if __name__ == "__main__":
    for version in ("v1", "v1.1"):
        for mode in ("fidelity", "extremely-style", "neutral"):
            print(version, mode, compare(version, mode))
