"""Oracle for PuLID-FLUX: the reference code against facestudio's, one transformer step, same random weights.

The reference is ToTheBeginning/PuLID on GitHub: its `flux/` (BFL's FLUX.1 model in plain torch, with PuLID's
`pulid_ca` calls between blocks) and `pulid/encoders_transformer.py` (`PerceiverAttentionCA`). Only those
modules are imported (they need `einops`, a test-support requirement, not facestudio's). The reference is found
at `$FACESTUDIO_PULID_REFERENCE` (a checkout) or read from the fetched mirror
(`/work/.mirror/ToTheBeginning+PuLID/repo`, a bare git directory); without either, `reference_or_reason`
says why and the test skips.

Weights: a tiny FLUX.1 (`models_flux.tiny_flux_components`' transformer shape) made by the reference with
seeded random weights, in BFL's key names (the published layout of flux1-dev.safetensors), converted for
diffusers by diffusers' own `convert_flux_transformer_checkpoint_to_diffusers`; PuLID's cross-attentions with
random weights in the `pulid_ca.N.*` layout of pulid_flux_v0.9.1.safetensors go to both.

Run as a script to print the differences: `python tests/support/pulid_flux_reference.py`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REFERENCE_ENV = "FACESTUDIO_PULID_REFERENCE"
MIRROR = Path("/work/.mirror/ToTheBeginning+PuLID/repo")
#: The reference files the oracle imports (and nothing else of the repository).
FILES = ("flux/__init__.py", "flux/math.py", "flux/model.py", "flux/modules/__init__.py", "flux/modules/layers.py",
         "pulid/encoders_transformer.py")
#: facestudio's tiny PuLID cross-attention (the ID tokens keep the real 2048 width).
HEADS, HEAD_DIM, ID_DIM = 2, 16, 2048


def reference_or_reason(folder: Path) -> tuple[Path | None, str]:
    """`(a folder holding FILES, "")`, or `(None, why not)`; files read from the mirror are written to `folder`."""
    try:
        importlib.import_module("einops")
    except ImportError:
        return None, "the reference PuLID-FLUX code needs einops (pip install einops), not installed"
    given = os.environ.get(REFERENCE_ENV)
    if given:
        missing = [f for f in FILES if not (Path(given) / f).is_file()]
        return (Path(given), "") if not missing else (None, f"{REFERENCE_ENV}={given} lacks {missing}")
    if not MIRROR.is_dir():
        return None, f"no PuLID reference: set {REFERENCE_ENV} to a checkout of ToTheBeginning/PuLID, or fetch it"
    for name in FILES:
        text = subprocess.run(["git", "--git-dir", str(MIRROR), "show", f"HEAD:{name}"], capture_output=True,
                              check=False)
        if text.returncode:
            return None, f"the PuLID mirror {MIRROR} lacks {name}"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(text.stdout)
    return folder, ""


def _import_reference(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        model = importlib.import_module("flux.model")
        encoders = importlib.import_module("pulid.encoders_transformer")
    finally:
        sys.path.remove(str(folder))
    return model, encoders


@contextlib.contextmanager
def _width(inner_dim: int):
    """diffusers' converter splits each single block's fused linear1 at FLUX.1's width (3072, hard-coded); this
    gives it the tiny width's split instead, for the length of the conversion only (single-threaded use)."""
    split = torch.split

    def tiny_split(tensor, sizes, dim=0):
        if isinstance(sizes, tuple) and sizes == (3072, 3072, 3072, 12288):
            sizes = (inner_dim, inner_dim, inner_dim, tensor.shape[dim] - 3 * inner_dim)
        return split(tensor, sizes, dim)

    torch.split = tiny_split
    try:
        yield
    finally:
        torch.split = split


def compare(folder: Path, seed: int = 0, id_weight: float = 0.8) -> dict[str, float]:
    """Max differences `{"no identity": ..., "one identity": ...}` of the transformer's output for one step."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from facestudio.guidance.kinds.pulid_flux import PuLIDFluxConfig, PuLIDFluxKind
    from facestudio.guidance.pulid_flux import IDENTITY_KEY, FluxIdentityCall, install
    from facestudio.models_flux import tiny_flux_components

    model, encoders = _import_reference(folder)
    transformer = tiny_flux_components()["transformer"]
    c = transformer.config
    dim = c.num_attention_heads * c.attention_head_dim
    params = model.FluxParams(in_channels=c.in_channels, vec_in_dim=c.pooled_projection_dim,
                              context_in_dim=c.joint_attention_dim, hidden_size=dim, mlp_ratio=4.0,
                              num_heads=c.num_attention_heads, depth=c.num_layers,
                              depth_single_blocks=c.num_single_layers,
                              axes_dim=list(c.axes_dims_rope), theta=10000, qkv_bias=True, guidance_embed=True)
    generator = torch.Generator().manual_seed(seed)
    reference = model.Flux(params)
    kind = PuLIDFluxKind(PuLIDFluxConfig(heads=HEADS, head_dim=HEAD_DIM, id_dim=ID_DIM))
    count = len(kind.layout(transformer)) // 7
    reference.pulid_ca = torch.nn.ModuleList([encoders.PerceiverAttentionCA(dim=dim, dim_head=HEAD_DIM, heads=HEADS,
                                                                            kv_dim=ID_DIM) for _ in range(count)])
    with torch.no_grad():  # random weights everywhere (the reference zero-initialises none, but norms are ones)
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.15 + (1.0 if p.ndim == 1 else 0.0) * 0.5)
    reference.eval()
    published = {k: v.clone() for k, v in reference.state_dict().items()}  # BFL's names + pulid_ca.N.*
    pulid = {k: v for k, v in published.items() if k.startswith("pulid_ca.")}
    bfl = {k: v for k, v in published.items() if not k.startswith("pulid_ca.")}
    with _width(dim):
        converted = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    transformer.load_state_dict(converted, strict=True)
    install(transformer, kind.modules_from(pulid, transformer, "(reference weights)"))

    tokens_h, tokens_w, text_len = 4, 6, 7
    img = torch.randn(1, tokens_h * tokens_w, c.in_channels, generator=generator)
    txt = torch.randn(1, text_len, c.joint_attention_dim, generator=generator)
    y = torch.randn(1, c.pooled_projection_dim, generator=generator)
    identity = torch.randn(1, 32, ID_DIM, generator=generator)
    img_ids = torch.zeros(tokens_h, tokens_w, 3)
    img_ids[..., 1] += torch.arange(tokens_h)[:, None]
    img_ids[..., 2] += torch.arange(tokens_w)[None, :]
    img_ids = img_ids.reshape(-1, 3)
    txt_ids = torch.zeros(text_len, 3)
    t, guidance = torch.tensor([0.7]), torch.tensor([4.0])
    gates = torch.full((1, tokens_h * tokens_w), id_weight)
    out = {}
    with torch.no_grad():
        for label, ref_id, call in (("no identity", None, None),
                                    ("one identity", identity, FluxIdentityCall((identity,), gates))):
            expected = reference(img=img, img_ids=img_ids[None], txt=txt, txt_ids=txt_ids[None], timesteps=t, y=y,
                                 guidance=guidance, id=ref_id, id_weight=id_weight)
            ours = transformer(hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=t,
                               guidance=guidance, img_ids=img_ids, txt_ids=txt_ids,
                               joint_attention_kwargs={IDENTITY_KEY: call}, return_dict=False)[0]
            out[label] = float((expected - ours).abs().max())
        out["identity effect"] = float((reference(img=img, img_ids=img_ids[None], txt=txt, txt_ids=txt_ids[None],
                                                  timesteps=t, y=y, guidance=guidance) - expected).abs().max())
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        found, reason = reference_or_reason(Path(tmp))
        if found is None:
            sys.exit(f"skipped: {reason}")
        for key, value in compare(found).items():
            print(f"{key}: max difference {value:.3g}")
