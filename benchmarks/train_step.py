"""Seconds per training step of the guidance module, against the bare UNet's forward + backward.

On a UNet with Stable Diffusion 1.5's shape and random weights (`facestudio.models.sd15_unet`, 859.5 M
parameters; nothing is downloaded), in one process, batch 1 at 256x256 (32x32 latents) by default:

* **bare**: the UNet alone, every weight trainable (what full fine-tuning pays before its optimiser step):
  forward on noisy latents, text states and a timestep, MSE against the noise, backward.
* **guidance step**: what `facestudio train` does per step inside the same UNet: an identity adapter and a
  style adapter loaded through `FaceStudioPipeline.load_adapters`, the base frozen; a two-person example
  (two identities, each limited to its half of the image by region masks, the training path of
  `training.modules`); the tokens made by the trainable projections, the UNet forward with
  `ip_adapter_masks`, MSE, backward, gradient clipping and the AdamW step over the guidance parameters.

Text states, latents and embeddings are random tensors: the text encoder, VAE and image encoder are frozen,
run without gradient, and are the same in both kinds of training, so they are left out of both. The two
alternate (A B, B A, ...) after one warm-up round; each round gives a ratio, and the medians are printed.

    python benchmarks/train_step.py                                # CPU, fp32, 2 rounds
    python benchmarks/train_step.py --device cuda --dtype bf16 --rounds 10

On a busy 2-core machine every operator with 2 threads waits for descheduled threads; `--threads 1` (the
default on CPU) makes the ratio far steadier there. The CPU run needs about 10 GB of memory (fp32 weights
and the bare UNet's gradients).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="training precision: the frozen base in this type, trainable weights in fp32 (autocast)")
    parser.add_argument("--size", type=int, default=256, help="image side (latents are size/8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 1)")
    args = parser.parse_args()

    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    bench = Bench(torch.device(args.device), dtype, args.size, args.batch)
    print(f"SD1.5-shaped UNet, {args.size}x{args.size}, batch {args.batch}, {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} thread(s); guidance parameters: {bench.trainable_count / 1e6:.1f} M")
    bare_times, step_times, ratios = [], [], []
    for round_ in range(args.rounds + 1):
        order = (bench.bare, bench.guidance_step) if round_ % 2 == 0 else (bench.guidance_step, bench.bare)
        times = {f.__name__: bench.timed(f) for f in order}
        if round_ == 0:
            continue  # warm-up: allocator, kernels, first-touch of the weights
        bare_times.append(times["bare"])
        step_times.append(times["guidance_step"])
        ratios.append(times["guidance_step"] / times["bare"])
        print(f"round {round_}: bare forward+backward {times['bare']:.2f} s, guidance training step "
              f"{times['guidance_step']:.2f} s, ratio {ratios[-1]:.2f}")
    print(f"median: guidance training step {statistics.median(step_times):.2f} s/step, bare UNet forward+backward "
          f"{statistics.median(bare_times):.2f} s; ratio {statistics.median(ratios):.2f}")


class Bench:
    """The UNet, its adapters and the inputs of one step; `bare` and `guidance_step` switch between the two."""

    def __init__(self, device, dtype, size, batch):
        import torch

        from facestudio.guidance import identity as idg
        from facestudio.guidance import style as sty
        from facestudio.models import sd15_unet, tiny_components
        from facestudio.pipeline import FaceStudioPipeline
        from facestudio.training.modules import GuidanceModules

        self.device, self.dtype = device, dtype
        unet = sd15_unet(torch.float32, "cpu")
        pipe = FaceStudioPipeline(**{**tiny_components(), "unet": unet})
        self.bare_processors = dict(unet.attn_processors)
        encoder = sty.tiny_style_encoder()
        id_config = idg.IdentityAdapterConfig(cross_attention_dim=768)
        st_config = sty.StyleAdapterConfig(image_embed_dim=encoder.embed_dim, cross_attention_dim=768)
        from facestudio.faces.analysis import FaceAnalyzer

        pipe.load_adapters(identity=idg.new_identity_adapter(unet, id_config), identity_config=id_config,
                           style=sty.new_style_adapter(unet, st_config), style_config=st_config, style_encoder=encoder,
                           face_analyzer=FaceAnalyzer())
        self.adapted_processors = dict(unet.attn_processors)
        self.hid_proj = unet.encoder_hid_proj
        self.guidance = GuidanceModules(unet, pipe.facestudio_adapters)
        unet.to(device)
        if dtype != torch.float32:
            unet.to(dtype=dtype)
        self.guidance.to(torch.float32)
        self.unet = unet
        self.trainable = list(self.guidance.parameters())
        trainable_ids = {id(p) for p in self.trainable}
        self.base = [p for p in unet.parameters() if id(p) not in trainable_ids]
        self.trainable_count = sum(p.numel() for p in self.trainable)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-5)

        g = torch.Generator().manual_seed(0)
        latent = size // 8
        self.latents = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
        self.noise = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
        self.text = torch.randn(batch, 77, 768, generator=g).to(device, dtype)
        self.timesteps = torch.randint(0, 1000, (batch,), generator=g).to(device)
        embeddings = torch.nn.functional.normalize(torch.randn(batch, 2, 128, generator=g), dim=-1)
        masks = torch.zeros(batch, 2, size, size)
        masks[:, 0, :, : size // 2] = 1
        masks[:, 1, :, size // 2:] = 1
        self.batch = {"id_embeddings": embeddings.to(device), "id_detail": torch.rand(batch, 2, 64, 128, generator=g)
                      .to(device), "id_masks": masks.to(device)}
        self.style = torch.randn(batch, encoder.embed_dim, generator=g).to(device)

    def _use(self, adapted: bool) -> None:
        # the projections hold attention layers of their own: the UNet's layer count follows encoder_hid_proj
        self.unet.encoder_hid_proj = self.hid_proj if adapted else None
        self.unet.set_attn_processor(dict(self.adapted_processors if adapted else self.bare_processors))  # it pops
        for p in self.base:
            p.requires_grad_(not adapted)
            p.grad = None

    def _autocast(self):
        import torch

        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def bare(self) -> None:
        import torch.nn.functional as F

        self._use(adapted=False)
        with self._autocast():
            prediction = self.unet(self.latents, self.timesteps, encoder_hidden_states=self.text).sample
        F.mse_loss(prediction.float(), self.noise.float()).backward()

    def guidance_step(self) -> None:
        import torch
        import torch.nn.functional as F

        from facestudio.training.modules import layer_masks

        self._use(adapted=True)
        masks = layer_masks(self.guidance.adapters, self.batch["id_masks"], tuple(self.latents.shape[-2:]))
        with self._autocast():
            tokens = self.guidance(self.batch, self.style)
            prediction = self.unet(self.latents, self.timesteps, encoder_hidden_states=self.text,
                                   added_cond_kwargs={"image_embeds": tokens},
                                   cross_attention_kwargs={"ip_adapter_masks": masks}).sample
        F.mse_loss(prediction.float(), self.noise.float()).backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self, step) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
