"""What PuLID-FLUX identities cost inside FLUX.1's transformer, and the peak memory of each memory mode.

On a transformer with FLUX.1-dev's shape (19 double- and 38 single-stream blocks, 3072 wide, guidance
embedding; 11.9 B parameters) and random weights (nothing is downloaded), with PuLID-FLUX's 20 published-size
cross-attentions installed (`guidance.pulid_flux.install`), at 1024x1024 (4096 image tokens, 512 T5 tokens):

1. Time per transformer call with two identities, each gated to its half of the image (the call's
   `FluxIdentityCall`, as `FaceStudioFluxPipeline.__call__` builds it), against the same transformer with no
   identity (`joint_attention_kwargs={"identity": None}`: the hooks return at once). Calls alternate
   (A B, B A, ...) after `--warmup` rounds; the median of `--repeats` ratios is printed. Target <= 1.15.
2. Peak GPU memory (`torch.cuda.max_memory_allocated`) of one transformer call in each memory mode:
   `none` (all on the GPU), `model-offload` (diffusers' `enable_model_cpu_offload` hook on the transformer:
   the whole transformer moves in for the call), `sequential-offload` (accelerate's `cpu_offload`: one layer
   at a time), `int8` and `fp8` (optimum-quanto weight-only quantisation of the transformer's linear layers;
   fp8 needs compute capability 8.9+). The text encoders and the VAE are not part of this number: T5-XXL
   adds 9.5 GB in bf16 where it stays on the GPU (with model offload it is moved out before the transformer).

    python benchmarks/flux_identity.py --device cuda                 # GPU: FLUX.1-dev's shape, bf16, 1024 px
    python benchmarks/flux_identity.py --tiny                        # any machine: the tiny FLUX (smoke test)

No GPU was available where this was written: the GPU numbers are still to be measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

TARGET_OVERHEAD = 1.15
#: FLUX.1-dev's transformer config (black-forest-labs/FLUX.1-dev transformer/config.json).
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
MODES = ("none", "model-offload", "sequential-offload", "int8", "fp8")


def build(tiny: bool, device: str, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    from facestudio.guidance.kinds.pulid_flux import PuLIDFluxConfig
    from facestudio.guidance.pulid_flux import install
    from facestudio.models_flux import tiny_flux_components

    if tiny:
        transformer, config = tiny_flux_components()["transformer"], PuLIDFluxConfig(heads=2, head_dim=16)
    else:
        torch.manual_seed(0)
        with torch.device(device if device == "cuda" else "cpu"):  # built where it runs: 48 GB in fp32 elsewhere
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                transformer = FluxTransformer2DModel(**FLUX_DEV)
            finally:
                torch.set_default_dtype(previous)
        config = PuLIDFluxConfig()
    transformer = transformer.to(device, dtype).eval()
    install(transformer, config.modules_for(transformer))
    return transformer, config


def inputs(transformer, side: int, text_tokens: int, device: str, dtype: torch.dtype) -> dict:
    from diffusers import FluxPipeline

    c = transformer.config
    rows = columns = side // 16
    g = torch.Generator(device="cpu").manual_seed(1)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return dict(hidden_states=make(1, rows * columns, c.in_channels),
                encoder_hidden_states=make(1, text_tokens, c.joint_attention_dim),
                pooled_projections=make(1, c.pooled_projection_dim),
                timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
                guidance=torch.full((1,), 3.5, device=device, dtype=dtype) if c.guidance_embeds else None,
                img_ids=FluxPipeline._prepare_latent_image_ids(1, rows, columns, device, dtype),
                txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype), return_dict=False)


def two_people(config, side: int, device: str, dtype: torch.dtype):
    from facestudio.guidance.pulid_flux import FluxIdentityCall

    rows = columns = side // 16
    gates = torch.zeros(2, rows, columns)
    gates[0, :, : columns // 2], gates[1, :, columns // 2:] = 1.0, 1.0
    g = torch.Generator().manual_seed(2)
    tokens = tuple(torch.randn(1, config.num_tokens, config.id_dim, generator=g).to(device, dtype) for _ in range(2))
    return FluxIdentityCall(tokens, gates.reshape(2, -1))


def timed(transformer, kwargs, joint, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    transformer(**kwargs, joint_attention_kwargs=joint)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def overhead(transformer, config, args, dtype) -> None:
    from facestudio.guidance.pulid_flux import IDENTITY_KEY

    kwargs = inputs(transformer, args.side, args.text_tokens, args.device, dtype)
    none, people = {IDENTITY_KEY: None}, {IDENTITY_KEY: two_people(config, args.side, args.device, dtype)}
    ratios, times = [], {"none": [], "two": []}
    with torch.inference_mode():
        for round_ in range(args.warmup + args.repeats):
            order = (("none", none), ("two", people)) if round_ % 2 == 0 else (("two", people), ("none", none))
            got = {name: timed(transformer, kwargs, joint, args.device) for name, joint in order}
            if round_ >= args.warmup:
                ratios.append(got["two"] / got["none"])
                for name in got:
                    times[name].append(got[name])
    ratio = statistics.median(ratios)
    print(f"transformer call, {args.side}x{args.side}, {dtype}: no identity {statistics.median(times['none']):.3f} s, "
          f"two identities {statistics.median(times['two']):.3f} s, ratio {ratio:.3f} "
          f"({'within' if ratio <= TARGET_OVERHEAD else 'OVER'} the {TARGET_OVERHEAD} target)")


def peak_memory(args, dtype) -> None:
    from accelerate import cpu_offload

    from facestudio.guidance.pulid_flux import IDENTITY_KEY

    for mode in args.modes:
        torch.cuda.empty_cache()
        transformer, config = build(args.tiny, "cpu" if "offload" in mode else "cuda", dtype)
        if mode in ("int8", "fp8"):
            from facestudio.models_flux import quantize_transformer

            quantize_transformer(transformer, mode)
        elif mode == "sequential-offload":
            cpu_offload(transformer, execution_device=torch.device("cuda"))
        elif mode == "model-offload":
            transformer.to("cuda")  # what the model-offload hook does before the call, and undoes after it
        kwargs = inputs(transformer, args.side, args.text_tokens, "cuda", dtype)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.inference_mode():
            transformer(**kwargs, joint_attention_kwargs={IDENTITY_KEY: two_people(config, args.side, "cuda", dtype)})
        torch.cuda.synchronize()
        print(f"{mode:>19}: peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, one call "
              f"{time.perf_counter() - start:.2f} s")
        del transformer, kwargs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny FLUX of the tests (a smoke test anywhere)")
    parser.add_argument("--side", type=int, help="image side (default 1024; 64 with --tiny)")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES,
                        help="memory modes to measure (CUDA only)")
    args = parser.parse_args()
    args.side = args.side or (64 if args.tiny else 1024)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    transformer, config = build(args.tiny, args.device, dtype)
    overhead(transformer, config, args, dtype)
    del transformer
    if args.device == "cuda":
        peak_memory(args, dtype)
    else:
        print("peak memory per mode: CUDA only (no GPU here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
