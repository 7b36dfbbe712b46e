"""What facestudio's guidance costs inside the diffusion model: adapter overhead and three-way guidance.

On a UNet with Stable Diffusion 1.5's shape and random weights (`facestudio.models.sd15_unet`, 859.5 M
parameters; nothing is downloaded), in one process:

1. One UNet call with facestudio's adapters active, against the bare UNet on the same input. The adapters
   are an identity adapter holding two identities, each gated to its own half of the image by a region
   mask, and a style adapter (untrained, built by `new_identity_adapter` / `new_style_adapter`), loaded
   through `FaceStudioPipeline.load_adapters`. Tokens and masks are made by the pipeline's own
   `identity_tokens` / `style_tokens` / `region_masks` and passed exactly as `FaceStudioPipeline.__call__`
   passes them (`added_cond_kwargs={"image_embeds": [...]}`,
   `cross_attention_kwargs={"ip_adapter_masks": LayerMasks(...)}`). The batch is the three-way batch
   (3 x `--batch`) that a call with references runs. Each adapted call gets a fresh `LayerMasks`, so the
   per-layer mask resizing (once per generation in the pipeline) is counted in every call: a worst case.
   The bare UNet is the same object with its original attention processors and no `encoder_hid_proj`
   (the state `unload_ip_adapter` leaves; the adapter modules are set aside, not copied or reloaded).
   Target ratio <= 1.10.
2. One denoising step (the pipeline's own `denoise_step`: latents stacked, scaled, UNet, guidance combined,
   Euler-ancestral step) with three-way guidance (`guidance.cfg.GuidanceRows` of 3B: uncond, text, text +
   reference) against ordinary two-way guidance (2B), the adapters active in both. The masks are made once
   and reused across steps, as in the pipeline. Target ratio <= 1.55 (batch 3 against 2 on a CPU scales
   about linearly; on a GPU the ratio is usually lower).
3. Peak memory of each configuration's first call: the process's peak resident set (VmHWM, reset just
   before through /proc/self/clear_refs where the kernel allows it), how much it grew above the resident
   set before the call, and on CUDA `torch.cuda.max_memory_allocated`.

The two calls of a comparison alternate (A B, B A, A B, ...) under `torch.inference_mode`, with the GPU
synchronised around each call on CUDA; after `--warmup` rounds, each of `--repeats` rounds gives one time
per call and one ratio, and the table shows their medians. The identity and style tokens, computed once per
generation outside the UNet, are timed for information. The text encoder (1 layer, hidden size 768), VAE,
tokenizer and style image encoder are tiny random models built in code and are not timed; the adapters'
weights are random, which does not change their speed.

    python benchmarks/guidance_overhead.py                                   # CPU, 256x256, fp32
    python benchmarks/guidance_overhead.py --device cuda --dtype fp16        # GPU, 512x512, 10 rounds

The CPU run at the defaults (256x256, so 32x32 latents; 1 warm-up + 3 rounds) takes about 70 s on 2 idle
cores and up to 4 minutes on a busy 2-core machine, and needs about 4.5 GB of memory (the fp32 UNet is
3.4 GB). Run it on an otherwise idle machine: with 2 threads, each operator waits for a descheduled thread
when another process competes for the cores, which makes single calls vary several-fold and the ratios
meaningless (0.4 to 1.4 for the adapters on a busy machine). How much CPU other processes took during the
timings is printed, with a warning when it matters; `--threads 1` is far less sensitive to them (adapters
1.02, 3-way 1.42 there, under the same load). `--profile` adds torch.profiler's top operators for one bare
and one adapted call.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

TARGET_ADAPTERS = 1.10
TARGET_THREE_WAY = 1.55
PROMPT = "a photo of two people in a park, oil painting"
NEGATIVE = "blurry, low quality"


# ------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM) since start or the last reset."""
    try:
        return _status_kib("VmHWM") / 1024
    except (OSError, TypeError):  # not Linux: best effort (never reset)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    try:
        return _status_kib("VmRSS") / 1024
    except (OSError, TypeError):
        return float("nan")


def _others_cpu_seconds() -> float:
    """CPU seconds used by the whole machine (/proc/stat) minus this process's own, since boot: a running
    count of what other processes took. NaN where /proc/stat is missing."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError, IndexError):
        return float("nan")
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy - time.process_time()


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux: `echo 5 > /proc/self/clear_refs`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------- setup


def build_pipeline(device, dtype):
    """A `FaceStudioPipeline`: SD 1.5's UNet (random weights), tiny other parts, a 768-wide text encoder."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from facestudio.models import sd15_unet, tiny_components
    from facestudio.pipeline import FaceStudioPipeline

    components = tiny_components()
    tokenizer = components["tokenizer"]
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        text_encoder = CLIPTextModel(config).eval()
    unet = sd15_unet(dtype, device)
    pipe = FaceStudioPipeline(**{**components, "unet": unet, "text_encoder": text_encoder})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def style_encoder_1024():
    """A tiny CLIP vision model with a 1024-d projection, like the ViT-H encoder of SD 1.5's public style adapter."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from facestudio.guidance.style import StyleEncoder

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=1024)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = CLIPVisionModelWithProjection(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return StyleEncoder(model, processor)


def load_adapters(pipe, style_encoder) -> dict[str, int]:
    """Load an identity and a style adapter through `load_adapters`; returns each one's parameter count."""
    from facestudio.guidance.identity import IdentityAdapterConfig, new_identity_adapter
    from facestudio.guidance.style import StyleAdapterConfig, new_style_adapter

    identity_config = IdentityAdapterConfig(cross_attention_dim=768)
    style_config = StyleAdapterConfig(image_encoder="in-process", image_embed_dim=style_encoder.embed_dim,
                                      cross_attention_dim=768)
    identity = new_identity_adapter(pipe.unet, identity_config)
    style = new_style_adapter(pipe.unet, style_config)
    counts = {}
    for name, checkpoint in (("identity", identity), ("style", style)):
        counts[name] = {part: sum(v.numel() for v in checkpoint[part].values())
                        for part in ("image_proj", "ip_adapter")}
    before = sum(p.numel() for p in pipe.unet.parameters())
    pipe.load_adapters(identity=identity, style=style, identity_config=identity_config, style_config=style_config,
                       style_encoder=style_encoder)
    added = sum(p.numel() for p in pipe.unet.parameters()) - before
    expected = sum(sum(c.values()) for c in counts.values())
    if added != expected:
        print(f"note: the UNet grew by {added:,} parameters on loading; the checkpoints hold {expected:,}")
    return counts


def make_inputs(pipe, batch: int, size: int, device, dtype):
    """Everything `FaceStudioPipeline.__call__` hands the UNet, made by the pipeline's own methods."""
    import numpy as np
    import PIL.Image
    import torch

    from facestudio.attention import LayerMasks, RegionMasks
    from facestudio.guidance.cfg import GuidanceRows
    from facestudio.guidance.identity import Identity
    from facestudio.pipeline import IdentityInput
    from facestudio.regions import Split, resolve_regions

    rng = np.random.default_rng(0)
    identities = []
    for i in range(2):
        embedding = rng.standard_normal(128).astype(np.float32)
        identities.append(Identity(embedding / np.linalg.norm(embedding),
                                   rng.random((64, 128), dtype=np.float32), "dlib", f"person {i + 1}"))
    people = [IdentityInput(identity=i, name=i.name) for i in identities]
    style_image = PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    positive, negative = pipe.encode_prompt([PROMPT], device, batch, True, [NEGATIVE])
    masks = pipe.region_masks(resolve_regions(Split(), 2, (size, size)), size, size)  # left and right halves
    latent_size = (size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    inputs = {"latent_size": latent_size}
    for rows in (GuidanceRows.for_call(True), GuidanceRows.for_call(False)):  # the pipeline's own rows
        tokens = [pipe.identity_tokens(identities, batch, rows), pipe.style_tokens(style_image, batch, rows)]
        inputs[len(rows)] = {
            "rows": rows, "tokens": [t.to(device=device, dtype=pipe.unet.dtype) for t in tokens],
            "text": rows.text(negative, positive),
        }
    inputs["regions"] = (RegionMasks(masks, (1.0, 1.0)), RegionMasks.full(1, 1.0))
    inputs["latents"] = torch.randn((batch, pipe.unet.config.in_channels, *latent_size),
                                    generator=torch.Generator().manual_seed(0)).to(device, positive.dtype)
    inputs["make_masks"] = lambda: LayerMasks(inputs["regions"], latent_size)
    inputs["token_shapes"] = {rows: [list(t.shape) for t in inputs[rows]["tokens"]] for rows in (3, 2)}
    inputs["people"], inputs["identities"], inputs["style_image"] = people, identities, style_image
    return inputs


# ------------------------------------------------------------------------------------------- timing


class AdapterSwitch:
    """Turns the loaded adapters off and on again without copying or reloading anything.

    Off is the state `unload_ip_adapter` leaves (the UNet's original attention processors, no
    `encoder_hid_proj`, `encoder_hid_dim_type` None), but the adapter modules are kept aside, so bare and
    adapted calls can alternate on the same UNet object.
    """

    def __init__(self, unet, bare_processors: dict):
        self.unet = unet
        self.bare = dict(bare_processors)
        self.adapted = dict(unet.attn_processors)
        self.hid_proj, self.hid_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type

    # The projection's own attention layers count among `attn_processors` while it is attached, so it is
    # detached before the bare processors are set and attached before the adapted ones are.
    def off(self):
        self.unet.encoder_hid_proj = None
        self.unet.config.encoder_hid_dim_type = None
        self.unet.set_attn_processor(dict(self.bare))  # set_attn_processor pops from the dict it is given

    def on(self):
        self.unet.encoder_hid_proj = self.hid_proj
        self.unet.config.encoder_hid_dim_type = self.hid_type
        self.unet.set_attn_processor(dict(self.adapted))


class Bench:
    """Runs several calls in alternation (A B, B A, A B, ...), so that drift and other load on the machine
    reach each of them alike; times are per call, ratios are per round and then their median."""

    def __init__(self, device, warmup: int, repeats: int):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.warmup, self.repeats = warmup, repeats
        self.can_reset_rss = _reset_peak_rss()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def interleaved(self, calls: dict) -> dict[str, dict]:
        """`calls`: name -> (setup, fn); `setup()` (untimed) prepares the UNet for `fn`.

        Returns per name: `seconds` (the timed calls, in round order), `median`, and the memory of its first
        call (warm-up or not): `peak_rss` (VmHWM, reset just before), `rss_growth` (peak minus the resident
        set before the call) and `cuda_peak` (`max_memory_allocated`, reset just before).
        """
        torch = self.torch
        results = {name: {"seconds": [], "cpu_seconds": []} for name in calls}
        names = list(calls)
        with torch.inference_mode():
            for round_ in range(self.warmup + self.repeats):
                for name in (names if round_ % 2 == 0 else names[::-1]):
                    setup, fn = calls[name]
                    setup()
                    first = round_ == 0
                    self.sync()
                    if first:
                        self.can_reset_rss = _reset_peak_rss()
                        start_rss = _rss_mib()
                        if self.cuda:
                            torch.cuda.reset_peak_memory_stats(self.device)
                    start, cpu_start = time.perf_counter(), time.process_time()
                    fn()
                    self.sync()
                    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                    if first:
                        peak = _peak_rss_mib()
                        results[name].update(peak_rss=peak, rss_growth=peak - start_rss, cuda_peak=(
                            torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None))
                    if round_ >= self.warmup:
                        results[name]["seconds"].append(elapsed)
                        results[name]["cpu_seconds"].append(cpu)
        for r in results.values():
            r["median"] = statistics.median(r["seconds"])
        return results


def paired_ratio(results: dict, numerator: str, denominator: str, key: str = "seconds") -> float:
    """Median over rounds of numerator / denominator (each round's two calls ran back to back)."""
    return statistics.median(a / b for a, b in zip(results[numerator][key], results[denominator][key]))


def profile(call, device, label: str, rows: int = 20) -> None:
    """torch.profiler's operators of one call, by self time (device time on CUDA)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode(), torch_profile(activities=activities) as prof:
        call()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    if cuda:  # `device_*` names since torch 2.4; `cuda_*` before
        sort = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    else:
        sort = "self_cpu_time_total"
    print(f"\n--- torch.profiler: {label} ---")
    print(events.table(sort_by=sort, row_limit=rows))


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="fp16 only on CUDA")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 256 on CPU, 512 on CUDA)")
    parser.add_argument("--batch", type=int, default=1, help="images per call, B (the UNet sees 3B or 2B)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per comparison (default 3 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators for one bare and one adapted call")
    args = parser.parse_args()

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from facestudio.request import GenerationSettings

    diffusers_logging.set_verbosity_error()  # "image_encoder is not loaded", "kept in float32": expected here
    transformers_logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    if args.dtype == "fp16" and args.device != "cuda":
        sys.exit("--dtype fp16 is only supported with --device cuda")
    size = args.size or (512 if args.device == "cuda" else 256)
    if size % 8 or size < 64:
        sys.exit(f"--size {size} must be a multiple of 8, at least 64")
    repeats = args.repeats or (10 if args.device == "cuda" else 3)
    if repeats < 1 or args.warmup < 0 or args.batch < 1:
        sys.exit("--repeats and --batch must be >= 1, --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    B = args.batch

    wall_start = time.perf_counter()
    pipe = build_pipeline(device, dtype)
    setup_peak = _peak_rss_mib()
    unet = pipe.unet
    unet_params = sum(p.numel() for p in unet.parameters())
    print(f"SD 1.5-shaped UNet, random weights: {unet_params:,} parameters ({unet_params / 1e6:.1f} M)")
    print(f"device {args.device}" + (f" ({torch.cuda.get_device_name(device)})" if args.device == "cuda" else "")
          + f", {args.dtype}, image {size}x{size} (latent {size // 8}x{size // 8}), B={B}, "
          f"torch threads {torch.get_num_threads()}; {args.warmup} warm-up + {repeats} timed rounds, median")

    bare_processors = dict(unet.attn_processors)
    counts = load_adapters(pipe, style_encoder_1024())
    for name, c in counts.items():
        print(f"{name} adapter: {sum(c.values()):,} parameters ({c['image_proj']:,} projection + "
              f"{c['ip_adapter']:,} to_k_ip/to_v_ip in the UNet's 16 cross-attention layers)")
    switch = AdapterSwitch(unet, bare_processors)
    with torch.inference_mode():
        inputs = make_inputs(pipe, B, size, device, dtype)
    print(f"tokens per adapter: 3-way {inputs['token_shapes'][3]}, 2-way {inputs['token_shapes'][2]}; "
          f"identity masks {list(inputs['regions'][0].masks.shape)} (left and right halves), style everywhere")

    # 1. One UNet call, bare against adapted, same UNet object and inputs.
    x3 = torch.cat([inputs["latents"]] * 3)
    t = torch.tensor(500, device=device)
    text3, tokens3 = inputs[3]["text"], inputs[3]["tokens"]

    def bare_call():
        return unet(x3, t, encoder_hidden_states=text3, return_dict=False)[0]

    def adapted_call():  # a fresh LayerMasks each call: the per-layer mask resizing is counted every time
        return unet(x3, t, encoder_hidden_states=text3, return_dict=False,
                    added_cond_kwargs={"image_embeds": tokens3},
                    cross_attention_kwargs={"ip_adapter_masks": inputs["make_masks"]()})[0]

    bench = Bench(device, args.warmup, repeats)
    others_start, timing_start = _others_cpu_seconds(), time.perf_counter()
    calls = bench.interleaved({"bare": (switch.off, bare_call), "adapted": (switch.on, adapted_call)})
    if args.profile:
        switch.off()
        profile(bare_call, device, "bare UNet call")
        switch.on()
        profile(adapted_call, device, "UNet call with adapters")

    # 2. One denoising step, three-way against two-way guidance, adapters on in both.
    def make_step(three_way: bool):
        scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(args.warmup + repeats, device=device)
        timesteps = iter(scheduler.timesteps)
        generator = torch.Generator(device).manual_seed(0)
        n = 3 if three_way else 2
        rows, text, tokens = inputs[n]["rows"], inputs[n]["text"], inputs[n]["tokens"]
        kwargs = {"added_cond_kwargs": {"image_embeds": tokens},  # masks made once per generation, as in the pipeline
                  "cross_attention_kwargs": {"ip_adapter_masks": inputs["make_masks"]()}}
        state = {"latents": inputs["latents"] * scheduler.init_noise_sigma}
        settings = GenerationSettings(PROMPT)

        def step():  # the pipeline's own step, at the default scales
            state["latents"] = pipe.denoise_step(scheduler, next(timesteps), state["latents"], rows, text, kwargs,
                                                 settings, generator)
        return step

    switch.on()
    steps = bench.interleaved({"2-way": (lambda: None, make_step(False)), "3-way": (lambda: None, make_step(True))})
    others = (_others_cpu_seconds() - others_start) / (time.perf_counter() - timing_start)  # CPUs' worth

    # Once per generation, outside the UNet: identity and style tokens (not part of the targets).
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(repeats):
            pipe.identity_tokens(inputs["identities"], B, inputs[3]["rows"])
            pipe.style_tokens(inputs["style_image"], B, inputs[3]["rows"])
        tokens_ms = 1000 * (time.perf_counter() - start) / repeats
    pipe.unload_adapters()

    adapted_ratio = paired_ratio(calls, "adapted", "bare")
    three_ratio = paired_ratio(steps, "3-way", "2-way")
    bare_ms = 1000 * calls["bare"]["median"]
    rows = [
        (f"bare UNet call, batch {3 * B}", calls["bare"], 1.0, None),
        (f"UNet call + adapters, batch {3 * B}", calls["adapted"], adapted_ratio, TARGET_ADAPTERS),
        (f"step, 2-way guidance, batch {2 * B}", steps["2-way"], 1.0, None),
        (f"step, 3-way guidance, batch {3 * B}", steps["3-way"], three_ratio, TARGET_THREE_WAY),
    ]
    cuda_col = device.type == "cuda"
    print(f"\n{'what':<38}{'ms':>9}{'ratio':>7}{'target':>8}{'':>6}{'peak RSS MiB':>14}{'+RSS MiB':>10}"
          + (f"{'CUDA peak MiB':>15}" if cuda_col else ""))
    for label, m, ratio, target in rows:
        verdict = "" if target is None else ("pass" if ratio <= target else "FAIL")
        target_text = "" if target is None else f"<={target:.2f}"
        line = (f"{label:<38}{1000 * m['median']:>9.1f}{ratio:>7.3f}{target_text:>8}{verdict:>6}"
                f"{m['peak_rss']:>14.0f}{m['rss_growth']:>10.0f}")
        print(line + (f"{m['cuda_peak']:>15.0f}" if cuda_col else ""))
    print(f"{'identity + style tokens (once/call)':<38}{tokens_ms:>9.1f}{tokens_ms / bare_ms:>7.3f}")

    print("\nratios: median over rounds of (adapted / bare) and (3-way step / 2-way step), the two calls of a "
          "round run back to back; the 3-way and 2-way steps both have the adapters on")
    fastest = {name: min(r["seconds"]) for name, r in {**calls, **steps}.items()}
    print(f"less sensitive to other load on the machine: fastest call against fastest call: adapters "
          f"{fastest['adapted'] / fastest['bare']:.3f}, 3-way {fastest['3-way'] / fastest['2-way']:.3f}; "
          f"process CPU time (median of per-round ratios): adapters "
          f"{paired_ratio(calls, 'adapted', 'bare', 'cpu_seconds'):.3f}, "
          f"3-way {paired_ratio(steps, '3-way', '2-way', 'cpu_seconds'):.3f}")
    rss_note = "reset before" if bench.can_reset_rss else "NOT reset before (so monotonic across rows)"
    print(f"memory: of each row's first call; peak RSS = VmHWM {rss_note} it, +RSS = that peak minus the "
          f"resident set before it; building the UNet peaked at {setup_peak:.0f} MiB")
    def ms(r):
        return [round(1000 * s) for s in r["seconds"]]
    print(f"every timed call (ms): bare {ms(calls['bare'])}, adapted {ms(calls['adapted'])}, "
          f"2-way {ms(steps['2-way'])}, 3-way {ms(steps['3-way'])}")
    print(f"wall time {time.perf_counter() - wall_start:.0f} s; during the timings other processes used "
          f"{others:.2f} of the {os.cpu_count()} CPUs on average")
    if others >= 0.1:  # NaN (no /proc/stat) compares False
        print("WARNING: other processes were using the CPU during the timings, so times and ratios are unreliable "
              "(with several threads, each operator waits for a descheduled thread). Run again on an idle "
              "machine, or with --threads 1.")

if __name__ == "__main__":
    main()
