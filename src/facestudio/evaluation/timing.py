"""Where a generation's time goes: face analysis, encoding, denoising, decoding.

The pipeline's call is one function; rather than edit it, forward pre-hooks on the UNet and the VAE decoder
mark when denoising and decoding start. The hooks sit on the shared modules for the length of one call, so
a timed call must not run beside other calls of the same pipeline (the evaluation runs its calls one by one).
On CUDA every mark synchronises first, so kernels queued before it are counted where they belong.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

#: The stages of one image, in order.
STAGES = ("face_analysis", "encoding", "denoising", "decoding")


def _now(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def stopwatch(device="cpu"):
    """`with stopwatch() as t: ...` then `t["seconds"]`."""
    result = {}
    start = _now(device)
    try:
        yield result
    finally:
        result["seconds"] = _now(device) - start


def timed_call(pipe, settings) -> tuple[object, dict[str, float]]:
    """`pipe(settings)` (a `GenerationSettings`) and its split: encoding (prompt, identity tokens, latents: up to
    the first UNet call), denoising (first UNet call to the last decoder call: the VAE's, or the tiny decoder's,
    whose earlier calls are step previews) and decoding (the rest)."""
    device = pipe.device
    marks = {}

    def mark(name, first: bool):
        def hook(module, args):
            if first:
                marks.setdefault(name, _now(device))
            else:
                marks[name] = _now(device)
        return hook

    decoders = [pipe.vae.decoder] + ([pipe.tiny_vae.decoder] if getattr(pipe, "tiny_vae", None) is not None else [])
    handles = [pipe.unet.register_forward_pre_hook(mark("unet", first=True))]
    handles += [d.register_forward_pre_hook(mark("decoder", first=False)) for d in decoders]
    try:
        start = _now(device)
        output = pipe(settings)
        end = _now(device)
    finally:
        for handle in handles:
            handle.remove()
    unet = marks.get("unet", end)
    decoder = marks.get("decoder", end)
    return output, {"encoding": unet - start, "denoising": decoder - unet, "decoding": end - decoder}
