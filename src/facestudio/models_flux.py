"""FLUX base models: a tiny random FLUX.1 built in code for tests, and FLUX's scheduler settings. Fetches nothing.

`tiny_flux_components` has FLUX.1's structure at a tiny size: the double-stream and single-stream transformer
(`FluxTransformer2DModel`, guidance embedding as in FLUX.1-dev), a VAE with FLUX's 16 latent channels and its
scaling and shift factors, the CLIP text encoder whose pooled output conditions the transformer, a T5 encoder
whose hidden states are its text tokens, and real tokenizers for both made offline (CLIP's as in
`models.tiny_tokenizer`, T5's a unigram model over printable characters). Downloads of real FLUX models go
through `models.load_base_pipeline` like every base model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from .models import _tiny_text_config, tiny_tokenizer

#: FLUX's VAE has 16 latent channels; the transformer reads them packed as 2x2 patches (64 numbers per token).
FLUX_LATENT_CHANNELS = 16
#: Hidden size of the tiny T5 (the transformer's `joint_attention_dim`) and of the tiny CLIP (its pooled size).
TINY_FLUX_TEXT_DIM = 32
#: Double-stream and single-stream blocks of the tiny transformer: with PuLID-FLUX's intervals (2 and 4) it
#: gets identity cross-attention after double blocks 0, 2 and single blocks 0, 4 (4 modules; FLUX.1 has 20).
TINY_FLUX_LAYERS, TINY_FLUX_SINGLE_LAYERS = 3, 5
#: T5 prompt length of FLUX.1-dev (FluxPipeline's `max_sequence_length` default).
T5_MAX_LENGTH = 512


def flux_scheduler(dev: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler as FLUX.1 ships it: `dev` with resolution-dependent shifting (shift
    3.0, base 0.5 to max 1.15 over 256 to 4096 image tokens), schnell without shifting (shift 1.0)."""
    if dev:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                               base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                               max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def tiny_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict[str, Any]:
    """A small random FLUX.1 in code, for `FluxPipeline(**components)` (and `FaceStudioFluxPipeline`).

    A 64x64 image is an 8x8 latent of 16 channels, 16 image tokens of 64 numbers; a step takes milliseconds.

    Args:
        seed (`int`, defaults to 0): seed of the random weights (the global RNG is left as it was).
        guidance_embeds (`bool`, defaults to True): FLUX.1-dev's guidance embedding (False: schnell's
            structure, with its unshifted scheduler).

    Returns:
        `dict` with `transformer`, `vae`, `text_encoder`, `tokenizer`, `text_encoder_2`, `tokenizer_2`,
        `scheduler`, `image_encoder=None` and `feature_extractor=None`.
    """
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * FLUX_LATENT_CHANNELS, num_layers=TINY_FLUX_LAYERS,
            num_single_layers=TINY_FLUX_SINGLE_LAYERS, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=TINY_FLUX_TEXT_DIM, pooled_projection_dim=TINY_FLUX_TEXT_DIM,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
        vae = tiny_flux_vae()
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, TINY_FLUX_TEXT_DIM))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=TINY_FLUX_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id))
    return {
        "transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer, "text_encoder_2": text_encoder_2.eval(), "tokenizer_2": tokenizer_2,
        "scheduler": flux_scheduler(dev=guidance_embeds), "image_encoder": None, "feature_extractor": None,
    }


def tiny_flux_vae() -> AutoencoderKL:
    # FLUX's VAE: 16 latent channels, no quant convs, scaling 0.3611 and shift 0.1159 (ae's config.json);
    # three downsamplers, so 8x like FLUX's.
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        latent_channels=FLUX_LATENT_CHANNELS, norm_num_groups=4, sample_size=64, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A real `T5TokenizerFast` made offline: a unigram model over the printable ASCII characters, each with and
    without T5's word-start mark, `</s>` appended, `<pad>` padding to `T5_MAX_LENGTH`, anything else `<unk>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    chars = [chr(i) for i in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("▁" + c, -1.5) for c in chars]
    model = Tokenizer(models.Unigram(vocab, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                         special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory(prefix="facestudio-t5-tokenizer-") as folder:
        # through a file, the one constructor argument transformers 4 and 5 both take
        path = Path(folder, "tokenizer.json")
        model.save(str(path))
        return T5TokenizerFast(tokenizer_file=str(path), eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                               extra_ids=0, model_max_length=T5_MAX_LENGTH)


#: Weight types `enable_flux_memory_modes(quantize=...)` takes: optimum-quanto's weight-only int8 and float8
#: (activations stay in the pipeline's dtype). int8 runs on any device; float8 needs a GPU with float8 support to
#: be fast (compute capability 8.9+). (torchao is not used: with torch 2.14, diffusers imports an installed torchao
#: at start-up and it prints warnings on every run.)
QUANTIZE_MODES = ("int8", "fp8")


def quantize_transformer(transformer, mode: str) -> None:
    """Quantise the weights of every linear layer of FLUX's blocks and embedders in place (`QUANTIZE_MODES`);
    PuLID's cross-attentions (small) keep theirs.

    Raises:
        FaceStudioError: an unknown `mode`, or optimum-quanto missing.
    """
    from .errors import FaceStudioError

    if mode not in QUANTIZE_MODES:
        raise FaceStudioError(f"--quantize {mode!r}: one of {', '.join(QUANTIZE_MODES)}")
    try:
        from optimum.quanto import freeze, qfloat8, qint8, quantize
    except ImportError:
        raise FaceStudioError("--quantize needs optimum-quanto: pip install 'facestudio[quantize]'") from None
    quantize(transformer, weights=qint8 if mode == "int8" else qfloat8, exclude="pulid_flux*")
    freeze(transformer)


def enable_flux_memory_modes(pipe, *, device=None, cpu_offload: bool = False, sequential_offload: bool = False,
                             quantize: str | None = None, vae_tiling: bool = False):
    """Fit FLUX.1 (12B transformer, 4.7B T5) on a smaller GPU; each mode trades speed for memory (docs/flux.md).

    Args:
        pipe: a FLUX pipeline loaded on the CPU (the modes then move what runs where).
        device: where it runs without offloading (default `models.choose_device`).
        cpu_offload (`bool`): diffusers' model offload: each model (T5, transformer, VAE) on the GPU only while it
            runs. CUDA only; elsewhere skipped with a log line.
        sequential_offload (`bool`): diffusers' sequential offload: every layer moved in as it runs (the least
            memory, by far the slowest). CUDA only.
        quantize (`str`, *optional*): `"int8"` or `"fp8"`: the transformer's linear weights quantised by
            optimum-quanto (weight-only; PuLID's cross-attentions stay as they are), about half the transformer's
            bf16 memory.
        vae_tiling (`bool`): decode in tiles.

    Raises:
        FaceStudioError: both offloads, an unknown `quantize`, or optimum-quanto missing.
    """
    from .errors import FaceStudioError
    from .models import choose_device

    if cpu_offload and sequential_offload:
        raise FaceStudioError("choose one of --cpu-offload and --sequential-offload")
    if quantize is not None:
        quantize_transformer(pipe.transformer, quantize)
    if vae_tiling:
        pipe.vae.enable_tiling()
    offload = cpu_offload or sequential_offload
    if offload and torch.cuda.is_available():
        if sequential_offload:
            pipe.enable_sequential_cpu_offload()
        else:
            pipe.enable_model_cpu_offload()
        return pipe
    if offload:
        import logging

        logging.getLogger(__name__).info("CPU offload skipped: it moves models to a CUDA GPU as they run, and "
                                         "none is available")
    return pipe.to(choose_device(device))
