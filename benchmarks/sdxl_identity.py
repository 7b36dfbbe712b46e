"""PuLID on SDXL-shaped models: a 4-step image with two people in their regions against one without, and the
time from photos to that image.

The models have SDXL base 1.0's shapes with random weights (nothing is downloaded; random weights cost the time
trained ones do): the UNet (`SDXL_UNET`, SDXL's `unet/config.json`, 2.57 B parameters), CLIP ViT-L and
OpenCLIP ViT-bigG text encoders, SDXL's VAE (float32, as its `force_upcast` config makes the pipeline run it).
PuLID v1's ID attention at the published widths is loaded through `load_adapters` from a random checkpoint in
`pulid_v1.bin`'s layout, with the ID encoder at the published size (BiSeNet, EVA02-CLIP-L-14-336 and v1's
IDEncoder) as the pipeline's encoder. The calls use the `pulid-sdxl` preset's settings: 4 Euler steps on
trailing timesteps, text and reference guidance 1.2 (two UNet rows per step, with or without identities).

1. Image: the pipeline call at `--size` with two identities, each in its half of the image, against the same
   call with no identity. Calls alternate (A B, B A, ...); after `--warmup` rounds, the median of `--repeats`
   ratios. Target <= 1.15 (the PuLID issue, on a GPU in fp16).
2. Encoders: each person's photo through face detection (YuNet), FFHQ alignment, BiSeNet, EVA-CLIP and the
   IDEncoder, as `PuLIDEncoder` does it. antelopev2's ArcFace (`glintr100.onnx`, a file the user supplies
   under its non-commercial licence) is not here: its 512-wide embedding is drawn at random, and its
   onnxruntime time (a ResNet-100 at 112 px) is not counted.
3. Photo to image: encoders + the two-person call. Target < 1.5 s for 1024x1024 on a GPU in fp16 (the
   few-step issue).

    python benchmarks/sdxl_identity.py --device cuda --dtype fp16      # GPU: 1024x1024
    python benchmarks/sdxl_identity.py                                 # CPU: 512x512, 1 round (5 min, 19 GB)
    python benchmarks/sdxl_identity.py --tiny                          # tiny SDXL and encoder: checks the script

No GPU was available where this was written: the GPU numbers are still to be measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from personalise import FACES, prepare_torch  # noqa: E402

TARGET_OVERHEAD = 1.15
TARGET_SECONDS = 1.5
#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the constructor arguments that differ from the defaults).
SDXL_UNET = dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
#: The two text encoders' shapes (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers).
TEXT_ENCODERS = (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                 dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      projection_dim=1280, hidden_act="gelu"))
PHOTOS = ("obama.jpg", "biden.jpg")


def sdxl_components() -> dict:
    """SDXL-shaped components with random weights, in float32 on the CPU (moved by the caller)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from facestudio.models import MAX_PROMPT_TOKENS, tiny_xl_components

    components = tiny_xl_components()
    tokenizer = components["tokenizer"]  # a small vocabulary: the embedding lookup costs the same
    texts = [CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_PROMPT_TOKENS,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **shape) for shape in TEXT_ENCODERS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        components.update(
            unet=UNet2DConditionModel(**SDXL_UNET).eval(),
            text_encoder=CLIPTextModel(texts[0]).eval(), text_encoder_2=CLIPTextModelWithProjection(texts[1]).eval(),
            vae=AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                              sample_size=1024, scaling_factor=0.13025, force_upcast=True).eval())
    return components


def pulid_encoder(tiny: bool):
    """PuLID v1's ID encoder (IDEncoder, EVA-CLIP tower, BiSeNet) with random weights, no antelopev2."""
    import torch

    from facestudio.guidance.pulid import eva, parsing
    from facestudio.guidance.pulid.encoder import PuLIDEncoder, encoder_sizes, tiny_pulid_encoder
    from facestudio.guidance.pulid.idformer import build_id_encoder

    if tiny:
        return tiny_pulid_encoder("v1")
    id_config, eva_config = encoder_sizes("v1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return PuLIDEncoder("v1", build_id_encoder(id_config).eval(),
                            eva.EvaTower(eva.build_tower(eva_config).eval(), eva_config),
                            parsing.FaceParser(parsing.BiSeNet().eval()))


def pulid_checkpoint(unet, encoder) -> dict:
    """`{"id_adapter": ..., "id_adapter_attn_layers": ...}` in `pulid_v1.bin`'s layout for `unet`: random ID
    key/value projections (std 1/sqrt(width)) and `encoder`'s ID encoder weights."""
    import torch

    from facestudio.guidance.pulid.attention import cross_attention_processors

    generator = torch.Generator().manual_seed(2)
    attention = {}
    for index, _, attn in cross_attention_processors(unet):
        for part in ("id_to_k", "id_to_v"):
            weight = torch.randn(attn.to_k.out_features, attn.to_k.in_features, generator=generator)
            attention[f"{index}.{part}.weight"] = weight / attn.to_k.in_features ** 0.5
    return {"id_adapter": encoder.id_encoder.state_dict(), "id_adapter_attn_layers": attention}


def encode_people(analyzer, encoder, device: str):
    """Each photo's person as PuLID ID tokens, timed: detection, alignment, parsing, EVA-CLIP, IDEncoder."""
    import numpy as np

    from facestudio import load_image
    from facestudio.evaluation.timing import stopwatch
    from facestudio.guidance.kinds.pulid import identity_from_tokens

    generator = np.random.default_rng(3)
    people = []
    with stopwatch(device) as took:
        for photo in PHOTOS:
            image = np.asarray(load_image(FACES / photo))
            face = analyzer.detect(image)[0]
            embedding = generator.standard_normal((1, 512)).astype(np.float32) * 20  # antelopev2's raw scale
            features = encoder.features_from_aligned(encoder.aligned_face(image, face)[None], embedding)
            people.append(identity_from_tokens(encoder.id_tokens(features), "pulid-v1", Path(photo).stem))
    return people, took["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024 on CUDA, 512 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2 on CUDA, 0 on the CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5 on CUDA, 1 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU)")
    parser.add_argument("--tiny", action="store_true", help="the tiny SDXL and PuLID encoder of the tests")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    size = args.size or (64 if args.tiny else 1024 if cuda else 512)
    warmup = args.warmup if args.warmup is not None else 2 if cuda else 0
    repeats = args.repeats or (5 if cuda else 1)

    dtype = prepare_torch(args)
    import numpy as np
    import torch

    from facestudio import FaceAnalyzer, load_image
    from facestudio.evaluation.timing import stopwatch, timed_call
    from facestudio.guidance.kinds.pulid import PuLIDConfig
    from facestudio.models import tiny_xl_components
    from facestudio.pipeline_xl import FaceStudioXLPipeline
    from facestudio.presets import get_preset
    from facestudio.request import GenerationSettings, IdentityInput
    from facestudio.sampling.schedulers import make_scheduler

    with stopwatch() as built:
        pipe = FaceStudioXLPipeline(**(tiny_xl_components() if args.tiny else sdxl_components()))
        pipe.set_progress_bar_config(disable=True)
        encoder = pulid_encoder(args.tiny)
        config = PuLIDConfig(version="v1", sizes="tiny" if args.tiny else "published",
                             cross_attention_dim=pipe.unet.config.cross_attention_dim)
        pipe.load_adapters(identity=pulid_checkpoint(pipe.unet, encoder), identity_config=config,
                           identity_encoder=encoder)
        pipe.to(args.device, dtype)
        encoder.to(args.device, dtype)
        analyzer = FaceAnalyzer()
        analyzer.detect(load_image(FACES / PHOTOS[0]))  # the detector loaded before timing
    millions = lambda modules: sum(p.numel() for m in modules for p in m.parameters()) / 1e6  # noqa: E731
    id_attention = [p for p in pipe.unet.attn_processors.values() if isinstance(p, torch.nn.Module)]
    encoder_modules = [encoder.id_encoder, encoder.tower.model, encoder.parser.model]
    print(f"models: {'tiny SDXL' if args.tiny else 'SDXL-shaped'} random weights: UNet "
          f"{millions([pipe.unet]) - millions(id_attention + encoder_modules):,.1f} M parameters, PuLID's ID "
          f"attention {millions(id_attention):,.1f} M, ID encoder {millions(encoder_modules):,.1f} M; {args.device} "
          f"{args.dtype}, {size}x{size}, built in {built['seconds']:.1f} s (not counted)")

    preset = get_preset("pulid-sdxl")
    options = dict(seed=0, width=size, height=size, num_inference_steps=preset.steps, scheduler=preset.scheduler,
                   text_guidance_scale=preset.text_guidance_scale,
                   reference_guidance_scale=preset.reference_guidance_scale)
    pipe.scheduler = make_scheduler(preset.scheduler, pipe.scheduler, timestep_spacing=preset.timestep_spacing)
    people, _ = encode_people(analyzer, encoder, args.device)  # once untimed: first-call costs
    half = size // 2
    calls = {"none": GenerationSettings("two people in a park", **options),
             "two": GenerationSettings("two people in a park", **options, identities=(
                 IdentityInput(identity=people[0], region=(0, 0, half, size)),
                 IdentityInput(identity=people[1], region=(half, 0, size, size))))}
    ratios, times, splits, outputs = [], {"none": [], "two": []}, {}, {}
    for round_ in range(warmup + repeats):
        order = ("none", "two") if round_ % 2 == 0 else ("two", "none")
        got = {}
        for name in order:
            outputs[name], splits[name] = timed_call(pipe, calls[name])
            got[name] = sum(splits[name].values())
        if round_ >= warmup:
            ratios.append(got["two"] / got["none"])
            for name in got:
                times[name].append(got[name])
    _, encoding = encode_people(analyzer, encoder, args.device)

    print(f"\n{'call (4 steps, 2 rows)':<26} {'encoding':>9} {'UNet':>9} {'decode':>9} {'total s':>9}")
    for name, label in (("none", "no identity"), ("two", "two PuLID identities")):
        split = splits[name]
        print(f"{label:<26} {split['encoding']:>9.3f} {split['denoising']:>9.3f} {split['decoding']:>9.3f} "
              f"{statistics.median(times[name]):>9.3f}")
    pixels = [np.asarray(outputs[name].images[0], np.int16) for name in ("none", "two")]
    print(f"the two images differ by up to {np.abs(pixels[1] - pixels[0]).max()} of 255 (the identities act)")
    ratio = statistics.median(ratios)
    print(f"\ntwo identities / none: {ratio:.3f} (median of {repeats}; target <= {TARGET_OVERHEAD}: "
          f"{'met' if ratio <= TARGET_OVERHEAD else 'NOT met'})")
    total = encoding + statistics.median(times["two"])
    print(f"ID encoder, two photos (detection, alignment, BiSeNet, EVA-CLIP, IDEncoder; not antelopev2): "
          f"{encoding:.3f} s")
    print(f"photos to a two-person image: {total:.3f} s (target on a GPU in fp16 at 1024x1024: < {TARGET_SECONDS} s"
          f"{'' if cuda and size == 1024 else '; not this run'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
