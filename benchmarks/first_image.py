"""Photo to first saved PNG at 512x512: the paper's 25-step three-way guidance against a 4-step one-row call with
the tiny decoder, on Stable Diffusion 1.5-shaped random weights.

The models have SD 1.5's shapes with random weights (nothing is downloaded; random weights cost the time
trained ones do): the UNet (`models.sd15_unet`, 859.5 M parameters), a CLIP ViT-L/14-shaped text encoder, SD's
VAE (`AutoencoderKL`, 83.7 M) and a TAESD-shaped `AutoencoderTiny` (its default config, 2.4 M). The identity
adapter is facestudio's own (dlib identity, untrained); the face models are loaded before timing.

Each run: the photo's face analysis, the call (encoding: prompt and identity tokens; UNet: the denoising loop;
decode), and the PNG written with its metadata. Rows:

* 25 steps of Euler ancestral with separate text and reference scales (7.5 / 3.0): three UNet rows per step;
* 4 steps of DDIM at scale 1 (as a few-step speed model samples; with its LoRA loaded the timesteps are
  trailing, which costs the same): one row per step, decoded by the tiny decoder.

Target: the 4-step row's photo-to-PNG time at most 0.1 of the 25-step row's.

    python benchmarks/first_image.py                          # CPU, 512x512
    python benchmarks/first_image.py --device cuda --dtype fp16
    python benchmarks/first_image.py --tiny                   # the tiny test models: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from personalise import FACES, build_pipeline, prepare_torch  # noqa: E402

TARGET = 0.1


def sd_vae():
    """SD 1.5's VAE shape (`vae/config.json`), random weights."""
    import torch
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                             layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
                             scaling_factor=0.18215).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU)")
    parser.add_argument("--photo", default=str(FACES / "obama.jpg"))
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of SD 1.5's shapes")
    args = parser.parse_args()

    import torch
    from diffusers import AutoencoderTiny

    from facestudio import FaceAnalyzer, load_image
    from facestudio.decoding import load_tiny_decoder
    from facestudio.evaluation.timing import stopwatch, timed_call
    from facestudio.guidance import identity as idg
    from facestudio.imaging import ai_generated_metadata, save_png
    from facestudio.models import tiny_autoencoder
    from facestudio.request import GenerationSettings, IdentityInput

    dtype = prepare_torch(args)
    size = 64 if args.tiny and args.size == 512 else args.size
    with stopwatch() as built:
        pipe = build_pipeline(args.tiny, args.device, dtype)
        if not args.tiny:
            pipe.register_modules(vae=sd_vae().to(args.device, dtype))
        load_tiny_decoder(pipe, tiny_autoencoder() if args.tiny else AutoencoderTiny())
        analyzer = FaceAnalyzer()
        analyzer.embed(load_image(FACES / "biden.jpg"))  # face models loaded before timing (an install cost)
        config = idg.IdentityAdapterConfig(cross_attention_dim=pipe.unet.config.cross_attention_dim)
        pipe.load_adapters(identity=idg.new_identity_adapter(pipe.unet, config), identity_config=config,
                           face_analyzer=analyzer)
    print(f"models: {'tiny test models' if args.tiny else 'SD 1.5-shaped UNet, text encoder, VAE + TAESD-shaped'}"
          f" random weights; {args.device} {args.dtype}, {size}x{size}, {torch.get_num_threads()} threads; built "
          f"in {built['seconds']:.1f} s (not counted)")

    rows = {
        "25-step three-way": dict(num_inference_steps=25, text_guidance_scale=7.5, reference_guidance_scale=3.0),
        "4-step one-row, tiny decoder": dict(num_inference_steps=4, scheduler="ddim", text_guidance_scale=1.0,
                                             reference_guidance_scale=1.0, decoder="tiny"),
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for k, (label, options) in enumerate(rows.items()):
            with stopwatch(args.device) as analysis:
                identity = idg.encode_person(analyzer, [args.photo], None, name="person")
            settings = GenerationSettings("a photo of a person as an astronaut", seed=0, width=size, height=size,
                                          identities=(IdentityInput(identity=identity),), **options)
            output, split = timed_call(pipe, settings)
            start = time.perf_counter()
            save_png(output.images[0], Path(folder) / f"{k}.png", ai_generated_metadata(output.settings))
            saving = time.perf_counter() - start
            results[label] = {"face analysis": analysis["seconds"], "encoders": split["encoding"],
                              "UNet": split["denoising"], "decode": split["decoding"], "save PNG": saving}
    print(f"\n{'row':<30} {'face analysis':>13} {'encoders':>9} {'UNet':>9} {'decode':>9} {'save PNG':>9} "
          f"{'total s':>9}")
    totals = {}
    for label, parts in results.items():
        totals[label] = sum(parts.values())
        print(f"{label:<30} " + " ".join(f"{parts[k]:>{w}.2f}" for k, w in
                                          (("face analysis", 13), ("encoders", 9), ("UNet", 9), ("decode", 9),
                                           ("save PNG", 9))) + f" {totals[label]:>9.2f}")
    slow, fast = totals.values()
    ratio = fast / slow
    print(f"\n4-step / 25-step photo-to-PNG time: {ratio:.3f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
