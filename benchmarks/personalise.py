"""Time to personalise: facestudio (photo to first image) against DreamBooth-LoRA and Textual Inversion.

One process, one UNet with Stable Diffusion 1.5's shape and random weights (`facestudio.models.sd15_unet`,
859.5 M parameters; nothing is downloaded), one text encoder with SD 1.5's shape (CLIP ViT-L/14 text: 12
layers, width 768, random weights), the tiny VAE of `tiny_components` (so decoding, the same for every
method, barely counts). Random weights cost the same time as trained ones.

1. facestudio: a real photo's face analysis (YuNet + dlib, models already loaded) and the pipeline call with
   an identity (three-way guidance, `--steps` Euler-ancestral steps at `--size`), split into face analysis,
   encoding, denoising and decoding. The identity adapter is untrained; its load is a one-time install cost,
   like the base model's, and is not counted.
2. The same sampling for a tuned model: the base model's ordinary two-way guided call, same steps and size.
3. Training, timed for real on the same UNet and then scaled to the usual step counts (the settings of
   diffusers' own examples; `evaluation.baselines` names the sources):
   * DreamBooth-LoRA: peft LoRA (rank 4) on the UNet attention's q/k/v/out, diffusion (epsilon) loss, AdamW;
     500 steps of batch 1 (examples/dreambooth/README_lora.md): the cheapest usual DreamBooth.
   * DreamBooth-LoRA with prior preservation, DreamBooth's own recipe (examples/dreambooth/README.md): 200
     class images sampled first at the pipeline's default 50 steps (timed per guided step in step 2, scaled),
     then 800 steps on the photo plus a class image (passes of batch 2, timed).
   * Textual Inversion: one new token's embedding trained through the text encoder and the frozen UNet;
     3000 steps x 4 accumulated passes of batch 1 (examples/textual_inversion/README.md).
   Each method is timed over `--passes` training passes after one warm-up pass.

4. facestudio at `--fast-steps` (default 4) as a few-step speed model samples: DDIM with trailing timesteps at
   guidance scale 1, so one UNet row per step (`guidance.cfg.GuidanceRows.for_scales`) instead of three. The
   speed LoRA's weights would not change the time of a step (fused, or within a few percent as an unfused
   PEFT adapter), so random weights stand for them here as they do for the base model.

Personalisation time = training + one image's sampling (tuning methods), or photo to first image
(facestudio). Target: facestudio (the few-step row) at least 100x less than either.

    python benchmarks/personalise.py                       # CPU, 256x256 (32x32 latents), 25 steps
    python benchmarks/personalise.py --size 128 --steps 10 # quicker (the ratio is about steps x passes)
    python benchmarks/personalise.py --device cuda --dtype fp16 --size 512
    python benchmarks/personalise.py --tiny                # the tiny test models: checks the script runs

On 2 busy CPU cores the default run takes a few minutes and about 5 GB of memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

TARGET_RATIO = 100.0
FACES = Path(os.environ.get("FACESTUDIO_TEST_FACES", Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"))


def prepare_torch(args):
    """The libraries quiet, torch's CPU threads set (`args.threads`, default 1 on the CPU), and the dtype of
    `args.dtype`."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    return torch.float16 if args.dtype == "fp16" else torch.float32


def build_pipeline(tiny: bool, device: str, dtype):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from facestudio.models import sd15_unet, tiny_components
    from facestudio.pipeline import FaceStudioPipeline

    components = tiny_components()
    if not tiny:
        tokenizer = components["tokenizer"]
        config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            components["text_encoder"] = CLIPTextModel(config).eval()
        components["unet"] = sd15_unet(torch.float32, "cpu")
    pipe = FaceStudioPipeline(**components).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> int:
    from facestudio.request import DEFAULT_STEPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"sampling steps (default {DEFAULT_STEPS}, the paper's)")
    parser.add_argument("--fast-steps", type=int, default=4, help="steps of the few-step row (default 4)")
    parser.add_argument("--passes", type=int, default=2, help="training passes timed per method (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on the CPU: far less sensitive to other processes "
                             "competing for the cores, which matters more here than speed)")
    parser.add_argument("--photo", default=str(FACES / "obama.jpg"), help="the person's photo")
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of SD 1.5's shape")
    args = parser.parse_args()

    import torch

    from facestudio import FaceAnalyzer, load_image
    from facestudio.evaluation.baselines import DREAMBOOTH_LORA, DREAMBOOTH_LORA_PRIOR, TEXTUAL_INVERSION
    from facestudio.evaluation.runspec import tuning_costs
    from facestudio.evaluation.timing import stopwatch, timed_call
    from facestudio.guidance import identity as idg
    from facestudio.request import GenerationSettings, IdentityInput

    dtype = prepare_torch(args)
    size = 64 if args.tiny and args.size == 256 else args.size
    print(f"models: {'tiny test models' if args.tiny else 'SD 1.5-shaped UNet + text encoder, random weights'}; "
          f"{args.device} {args.dtype}, {size}x{size} ({size // 8}x{size // 8} latents), {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    with stopwatch() as t:
        pipe = build_pipeline(args.tiny, args.device, dtype)
        analyzer = FaceAnalyzer()
        analyzer.embed(load_image(FACES / "biden.jpg"))  # face models loaded before timing (an install cost)
        config = idg.IdentityAdapterConfig(cross_attention_dim=pipe.unet.config.cross_attention_dim)
        pipe.load_adapters(identity=idg.new_identity_adapter(pipe.unet, config), identity_config=config,
                           face_analyzer=analyzer)
    print(f"models built in {t['seconds']:.1f} s (not counted)")

    # 1. facestudio: photo -> first image
    call = GenerationSettings("a photo of a person as an astronaut", num_inference_steps=args.steps, width=size,
                              height=size, seed=0)
    with stopwatch(args.device) as analysis:
        identity = idg.encode_person(analyzer, [args.photo], None, name="person")
    _, split = timed_call(pipe, dataclasses.replace(call, identities=(IdentityInput(identity=identity),)))
    facestudio = analysis["seconds"] + sum(split.values())
    print(f"facestudio: face analysis {analysis['seconds']:.2f} s, encoding {split['encoding']:.2f} s, "
          f"denoising {split['denoising']:.2f} s, decoding {split['decoding']:.2f} s: {facestudio:.1f} s to first image")

    # 1b. facestudio as a few-step speed model samples: one row per step
    with stopwatch(args.device) as fast_analysis:
        identity = idg.encode_person(analyzer, [args.photo], None, name="person")
    fast_call = dataclasses.replace(call, identities=(IdentityInput(identity=identity),),
                                    num_inference_steps=args.fast_steps, scheduler="ddim", text_guidance_scale=1.0,
                                    reference_guidance_scale=1.0)
    _, fast_split = timed_call(pipe, fast_call)
    fast = fast_analysis["seconds"] + sum(fast_split.values())
    print(f"facestudio {args.fast_steps}-step one-row: face analysis {fast_analysis['seconds']:.2f} s, encoding "
          f"{fast_split['encoding']:.2f} s, denoising {fast_split['denoising']:.2f} s, decoding "
          f"{fast_split['decoding']:.2f} s: {fast:.1f} s to first image")

    # 2. The base model's sampling, as a tuned model samples
    pipe.unload_adapters()
    _, plain = timed_call(pipe, call)
    sampling = sum(plain.values())
    print(f"base model sampling (two-way guidance): {sampling:.1f} s")

    # 3. Training passes, timed and scaled
    costs = tuning_costs(pipe, args.photo, (size, size), (DREAMBOOTH_LORA, DREAMBOOTH_LORA_PRIOR, TEXTUAL_INVERSION),
                         passes=args.passes)
    per_sampling_step = plain["denoising"] / args.steps  # one two-way guided step, as class images are sampled

    print(f"\n{'method':<24} {'s/pass':>8} {'passes':>8} {'class img s':>12} {'training s':>11} {'sampling s':>11} "
          f"{'total s':>10} {'ratio':>8}")
    for label, seconds in ((f"facestudio {args.steps}-step", facestudio), (f"facestudio {args.fast_steps}-step", fast)):
        print(f"{label:<24} {'-':>8} {'-':>8} {0:>12.1f} {0:>11.1f} {seconds:>11.1f} {seconds:>10.1f} "
              f"{seconds / fast:>8.1f}")
    worst = worst_slow = None
    for cost in costs:
        classes = cost.class_image_seconds(per_sampling_step)
        total = cost.personalisation_seconds(sampling, per_sampling_step)
        ratio = total / fast
        worst = ratio if worst is None else min(worst, ratio)
        worst_slow = total / facestudio if worst_slow is None else min(worst_slow, total / facestudio)
        passes = cost.recipe.steps * cost.recipe.passes_per_step
        print(f"{cost.recipe.method:<24} {cost.seconds_per_pass:>8.2f} {passes:>8} {classes:>12.1f} "
              f"{cost.total_seconds:>11.1f} {sampling:>11.1f} {total:>10.1f} {ratio:>8.1f}")
    for cost in costs:
        print(f"  {cost.recipe.method}: {cost.recipe.source}")
    verdict = "met" if worst >= TARGET_RATIO else "NOT met"
    print(f"\nratios above: against facestudio {args.fast_steps}-step. At {args.steps} steps (three-way) facestudio "
          f"personalises {worst_slow:.1f}x faster than the faster tuning method; at {args.fast_steps} steps (one row) "
          f"{worst:.0f}x (target >= {TARGET_RATIO:.0f}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
