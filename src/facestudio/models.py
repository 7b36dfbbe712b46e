"""Base diffusion models: where they come from and where they run.

What each function fetches:

- :func:`load_base_pipeline` is the one place in facestudio that downloads. With a hub id (for example
  `"stable-diffusion-v1-5/stable-diffusion-v1-5"`) it fetches that diffusers pipeline from the Hugging Face
  model hub into huggingface_hub's cache (several GB on first use, nothing afterwards) and logs what it
  fetches before it starts. With `"tiny"` or a local folder it fetches nothing, and with
  `local_files_only=True` or `HF_HUB_OFFLINE=1` it only looks in the local cache.
- :func:`tiny_components` builds a small random Stable Diffusion in code, for tests. Fetches nothing.
- :func:`sd15_unet_config` and :func:`sd15_unet` write out Stable Diffusion 1.5's UNet architecture and build
  it with random weights, for benchmarks. Fetch nothing.
- :func:`choose_device`, :func:`choose_dtype` and :func:`enable_memory_savers` fetch nothing.

Example:

```py
>>> import torch
>>> from facestudio.models import load_base_pipeline
>>> pipe = load_base_pipeline("tiny")
>>> image = pipe("a photo", num_inference_steps=2, height=64, width=64,
...              generator=torch.Generator().manual_seed(0), output_type="np").images[0]
>>> image.shape
(64, 64, 3)
```
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import huggingface_hub.errors as hf_errors
import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from huggingface_hub.utils import validate_repo_id
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .errors import FaceStudioError, ModelFileError, first_line

logger = logging.getLogger(__name__)

#: The name :func:`load_base_pipeline` takes for the tiny random pipeline of :func:`tiny_components`.
TINY = "tiny"

#: Tokens of CLIP's tokenizer that are not text. `<|endoftext|>` is also the padding token, as in SD 1.x.
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

#: Prompt length of CLIP's text encoder, so of every Stable Diffusion 1.x / 2.x.
MAX_PROMPT_TOKENS = 77

#: Hidden size of the tiny text encoder, and so the tiny UNet's `cross_attention_dim`.
TINY_TEXT_DIM = 64

#: Parameters of Stable Diffusion 1.5's UNet (`unet/config.json` of the released pipeline).
SD15_UNET_PARAMETERS = 859_520_964

# Errors a hub download can end in: huggingface_hub's (HTTP, repository not found, offline mode, not in the
# cache) derive from OSError or ValueError; its HTTPError (httpx2's) does not, so it is named too where the
# installed version has it.
_HUB_ERRORS = (OSError, ValueError, getattr(hf_errors, "HTTPError", OSError))

# Errors loading a local folder can end in: a missing or damaged component file, a bad config, a component
# class the installed libraries lack.
_FOLDER_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError)


# ---------------------------------------------------------------------------------------------------------
# Tiny components, for tests
# ---------------------------------------------------------------------------------------------------------


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """Build a small random Stable Diffusion in code, for `StableDiffusionPipeline(**components)`.

    Downloads nothing. The parts have SD 1.x's structure at a tiny size: a VAE that downsamples by 8 to 4
    latent channels, a UNet with cross-attention at two resolutions (8x8 and 4x4 latents for a 64x64 image)
    attending to a 64-wide CLIP text encoder, a real `CLIPTokenizer` over a byte-level vocabulary, and the
    Euler ancestral sampler the FaceStudio paper uses. A 64x64 image takes milliseconds per step on a CPU.

    Args:
        seed (`int`, defaults to 0):
            Seed of the random weights. The same seed gives bit-identical weights; the global torch RNG is
            left as it was.

    Returns:
        `dict` with `unet`, `vae`, `text_encoder`, `tokenizer`, `scheduler`, `safety_checker=None`,
        `feature_extractor=None`, `image_encoder=None` and `requires_safety_checker=False`.
    """
    tokenizer = tiny_tokenizer()
    # Module constructors draw from the global RNG; a forked RNG makes them reproducible without changing
    # the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet()
        vae = _tiny_vae()
        text_encoder = _tiny_text_encoder(tokenizer)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": sd15_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def tiny_xl_components(seed: int = 0) -> dict[str, Any]:
    """A small random SDXL in code, for `StableDiffusionXLPipeline(**components)` (and `FaceStudioXLPipeline`).

    Like :func:`tiny_components`, with SDXL's structure: two text encoders (the second with a projection
    whose pooled output conditions the UNet), their hidden states concatenated as the UNet's 64-wide
    cross-attention input, and the "text_time" added conditioning (pooled text + 6 size numbers).
    """
    tokenizer = tiny_tokenizer()
    half = TINY_TEXT_DIM // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=half + 6 * 8,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, half))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(tokenizer, half, projection_dim=half))
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval(), "tokenizer_2": tiny_tokenizer(), "scheduler": sd15_scheduler(),
        "image_encoder": None, "feature_extractor": None,
    }


def tiny_tokenizer() -> CLIPTokenizer:
    """A real `CLIPTokenizer` over a byte-level vocabulary with no merges, made offline.

    Every word becomes one token per byte (its last byte in the `</w>` form), so any text encodes and the
    vocabulary stays at 514 entries. Padded to 77 tokens with `<|endoftext|>`, like SD 1.x's tokenizer.

    Returns:
        `transformers.CLIPTokenizer` with `model_max_length=77`.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + [BOS_TOKEN, EOS_TOKEN]
    with tempfile.TemporaryDirectory(prefix="facestudio-tokenizer-") as folder:
        # Files, not in-memory arguments: the constructor's arguments differ between transformers 4 and 5,
        # while loading vocab.json + merges.txt from a folder works in both.
        ids = {token: i for i, token in enumerate(vocab)}
        Path(folder, "vocab.json").write_text(json.dumps(ids), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(
            folder,
            model_max_length=MAX_PROMPT_TOKENS,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
        )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's map of the 256 bytes to printable characters (byte-level BPE's base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(chars.items()))


def _tiny_unet() -> UNet2DConditionModel:
    # Two cross-attention down and up blocks so that attention runs at two latent resolutions (region masks
    # are resized per resolution), plus the cross-attention mid block. sample_size 8 makes the pipeline's
    # default size 64x64.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_autoencoder(seed: int = 0):
    """A TAESD-shaped `AutoencoderTiny` with random weights (four blocks: scale factor 8, 4 latent channels), for
    tests of the tiny decoder and previews (`decoding.py`); the real ones are madebyollin/taesd(xl)."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                               num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).eval()


def _tiny_vae() -> AutoencoderKL:
    # Four encoder blocks: three downsamplers, so the VAE scale factor is 8 as in SD.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(_tiny_text_config(tokenizer, TINY_TEXT_DIM))


def _tiny_text_config(tokenizer: CLIPTokenizer, hidden_size: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        # The pooled output is read at the end token; naming its id keeps transformers from guessing.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def sd15_scheduler() -> EulerAncestralDiscreteScheduler:
    """Euler ancestral with Stable Diffusion 1.5's noise schedule: the FaceStudio paper's sampler.

    Returns:
        `EulerAncestralDiscreteScheduler` (scaled-linear betas 0.00085 to 0.012 over 1000 steps, epsilon
        prediction, "leading" spacing with offset 1, as in SD 1.5's `scheduler_config.json`).
    """
    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


# ---------------------------------------------------------------------------------------------------------
# Stable Diffusion 1.5's UNet with random weights, for benchmarks
# ---------------------------------------------------------------------------------------------------------


def sd15_unet_config() -> dict[str, Any]:
    """The `UNet2DConditionModel` config of Stable Diffusion 1.5, written out.

    Returns:
        `dict` of constructor arguments; `UNet2DConditionModel(**sd15_unet_config())` has 859,520,964
        parameters, like the released `unet/`.
    """
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def sd15_unet(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> UNet2DConditionModel:
    """Stable Diffusion 1.5's UNet with random weights: SD 1.5's speed and memory without its weights.

    Downloads nothing. Weights are drawn on the CPU in float32 (3.4 GB) and then moved.

    Args:
        dtype (`torch.dtype`, defaults to `torch.float32`):
            Parameter type after the move.
        device (`str` or `torch.device`, defaults to `"cpu"`):
            Where the model is moved.
        seed (`int`, defaults to 0):
            Seed of the random weights; the global torch RNG is left as it was.

    Returns:
        `UNet2DConditionModel` in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**sd15_unet_config())
    return unet.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------------------
# Devices and precision
# ---------------------------------------------------------------------------------------------------------


def choose_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to run on: `preferred` if it is available, else CUDA, then Apple's MPS, then the CPU.

    Args:
        preferred (`str` or `torch.device`, *optional*):
            A device such as `"cuda"`, `"cuda:1"`, `"mps"` or `"cpu"`.

    Returns:
        `torch.device`.

    Raises:
        FaceStudioError: `preferred` is not a device name, or is not available on this machine.
    """
    if preferred is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as error:
        raise FaceStudioError(
            f"unknown device {str(preferred)!r} ({error}); use 'cuda', 'mps' or 'cpu'"
        ) from error
    reason = _unavailable_reason(device)
    if reason:
        raise FaceStudioError(f"device {str(device)!r} is not available: {reason}. Choose another device, or "
                              "leave the device unset to pick the best one available.")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _unavailable_reason(device: torch.device) -> str | None:
    """Why `device` cannot be used here, or None if it can."""
    if device.type == "cpu" or device.type == "meta":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "this torch has no CUDA support or sees no NVIDIA GPU"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} CUDA device(s) are visible"
        return None
    if device.type == "mps":
        return None if _mps_available() else "Apple's Metal (MPS) backend is not available in this torch"
    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "is_available") and backend.is_available():
        return None
    return f"this torch has no working {device.type!r} backend"


def choose_dtype(device: str | torch.device) -> torch.dtype:
    """The parameter type for `device`: float16 on CUDA, float32 elsewhere.

    float16 halves memory and time on NVIDIA GPUs; on the CPU it is slow or unsupported, and on MPS it
    gives black images with some SD 1.x checkpoints, so float32 there.

    Args:
        device (`str` or `torch.device`):
            Where the pipeline runs.

    Returns:
        `torch.dtype`.
    """
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def enable_memory_savers(pipe, *, cpu_offload: bool = False, vae_tiling: bool = False):
    """Trade speed for memory on a loaded pipeline.

    Args:
        pipe (`diffusers.DiffusionPipeline`):
            The pipeline; changed in place.
        cpu_offload (`bool`, defaults to `False`):
            Keep each model on the CPU until it runs (diffusers' `enable_model_cpu_offload`, needs
            accelerate). Only with CUDA; elsewhere it is skipped with a log message.
        vae_tiling (`bool`, defaults to `False`):
            Decode (and encode) large images in overlapping tiles, so memory stays flat with image size.

    Returns:
        The same `pipe`.
    """
    if cpu_offload:
        if torch.cuda.is_available():
            pipe.enable_model_cpu_offload()
        else:
            logger.info("model CPU offload skipped: it moves each model to a CUDA GPU as it runs, "
                        "and none is available")
    if vae_tiling:
        vae = getattr(pipe, "vae", None)
        if vae is None:
            logger.info("VAE tiling skipped: this pipeline has no VAE")
        else:
            vae.enable_tiling()
    return pipe


# ---------------------------------------------------------------------------------------------------------
# Loading a base pipeline
# ---------------------------------------------------------------------------------------------------------


def load_base_pipeline(
    model: str | os.PathLike,
    pipeline_class=StableDiffusionPipeline,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    **kwargs,
):
    """Load a base diffusion pipeline from the tiny test model, a local folder or the model hub.

    This is the one function in facestudio that downloads: only when `model` is a hub id that is not in the
    local cache yet, and it logs what it fetches first.

    Args:
        model (`str` or `os.PathLike`):
            `"tiny"` for the random test model of :func:`tiny_components`; a folder holding a diffusers
            pipeline (with `model_index.json`, as written by `save_pretrained`); or a model hub id such as
            `"stable-diffusion-v1-5/stable-diffusion-v1-5"`. A name that looks like a path (starts with `.`,
            `~` or `/`, or is not a valid hub id) is never looked up on the hub.
        pipeline_class (`type`, defaults to `StableDiffusionPipeline`):
            The diffusers pipeline class to build, e.g. a facestudio pipeline.
        device (`str` or `torch.device`, *optional*):
            Where the pipeline runs; by default :func:`choose_device` picks it.
        dtype (`torch.dtype`, *optional*):
            Parameter type; by default :func:`choose_dtype` picks it for the device.
        local_files_only (`bool`, *optional*):
            For hub ids: only use huggingface_hub's local cache, never the network. By default True when
            the environment sets `HF_HUB_OFFLINE=1`, else False.
        kwargs:
            For a folder or hub id, passed to `pipeline_class.from_pretrained` (e.g. `variant="fp16"`,
            `revision`, or a replacement component such as `scheduler=...`). For `"tiny"`, replacement
            components.

    Returns:
        A `pipeline_class` on `device` in `dtype`, with no safety checker.

    Raises:
        ModelFileError: the folder does not exist or holds no loadable pipeline, or the hub id could not
            be fetched.
        FaceStudioError: `device` is not available.

    Example:

    ```py
    >>> from facestudio.models import load_base_pipeline
    >>> pipe = load_base_pipeline("tiny", device="cpu")  # or a folder, or a hub id (downloads once)
    >>> pipe.vae_scale_factor
    8
    ```
    """
    device = choose_device(device)
    dtype = dtype if dtype is not None else choose_dtype(device)
    name = os.fspath(model)
    if name == TINY:
        pipe = pipeline_class(**{**tiny_components(), **kwargs})
        if dtype != torch.float32:  # built in float32; cast only when asked (diffusers warns on every cast)
            pipe.to(dtype=dtype)
    else:
        path = Path(name).expanduser()
        if path.exists():
            pipe = _load_from_folder(path, pipeline_class, dtype, kwargs)
        elif _looks_like_path(name):
            raise ModelFileError(
                f"base model {name!r}: no such folder ({path.absolute()}). Pass a folder that holds a "
                "diffusers pipeline (model_index.json and one folder per component), or a model hub id such "
                "as 'stable-diffusion-v1-5/stable-diffusion-v1-5'."
            )
        else:
            pipe = _load_from_hub(name, pipeline_class, dtype, local_files_only, kwargs)
    return pipe.to(device)


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a path rather than a hub id.

    On POSIX a hub id ("org/name") contains `os.sep`, so the separator alone cannot decide: a name is a path
    when it starts like one, uses the other separator, or could not be a hub id at all.
    """
    if name.startswith((".", "~", "/", "\\")) or os.path.isabs(name) or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except hf_errors.HFValidationError:
        return True
    return False


def _safety_checker_off(pipeline_class) -> dict[str, Any]:
    """The arguments that turn the safety checker off, for pipelines that have one (SDXL has none)."""
    parameters = inspect.signature(pipeline_class.__init__).parameters
    off = {"safety_checker": None, "requires_safety_checker": False}
    return {key: value for key, value in off.items() if key in parameters}


def _load_from_folder(path: Path, pipeline_class, dtype: torch.dtype, kwargs: dict[str, Any]):
    if not path.is_dir():
        raise ModelFileError(
            f"base model {str(path)!r} is a file, not a folder. Pass the folder of a diffusers pipeline "
            "(with model_index.json); a single-file checkpoint must be converted to one first."
        )
    kwargs = {**_safety_checker_off(pipeline_class), **kwargs}
    _check_pipeline_folder(path, given=kwargs)
    try:
        return pipeline_class.from_pretrained(path, local_files_only=True, **_dtype_kwarg(dtype), **kwargs)
    except _FOLDER_ERRORS as error:
        raise ModelFileError(
            f"base model folder {str(path)!r} could not be loaded as a {pipeline_class.__name__}: "
            f"{first_line(error)}. Check that every component listed in model_index.json has its folder "
            "with config and weights (re-save or re-download the pipeline)."
        ) from error


def _check_pipeline_folder(path: Path, given: dict[str, Any]) -> None:
    """Name what is missing from a pipeline folder before diffusers fails on it with a vaguer message.

    Args:
        path (`Path`): the folder.
        given (`dict`): components passed in by the caller, which need no folder.
    """
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelFileError(
            f"base model folder {str(path)!r} has no model_index.json, so it is not a diffusers pipeline. "
            "Pass the folder written by a pipeline's save_pretrained(), or a model hub id."
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(
            f"base model folder {str(path)!r}: model_index.json is not readable JSON ({error}). "
            "Re-save or re-download the pipeline."
        ) from error
    if not isinstance(index, dict):
        raise ModelFileError(f"base model folder {str(path)!r}: model_index.json is not a JSON object. "
                             "Re-save or re-download the pipeline.")
    # A component entry is [library, class]; [null, null] marks one saved as None (no safety checker).
    missing = sorted(
        key for key, entry in index.items()
        if not key.startswith("_") and key not in given
        and isinstance(entry, list) and len(entry) == 2 and entry[0] is not None
        and not (path / key).is_dir()
    )
    if missing:
        raise ModelFileError(
            f"base model folder {str(path)!r} lacks the component folder(s) {missing} that its "
            "model_index.json lists. Re-save or re-download the whole pipeline."
        )


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`from_pretrained`'s dtype argument: diffusers 0.42 (pinned) takes `dtype` and deprecates `torch_dtype`."""
    return {"dtype": dtype}


def _load_from_hub(name: str, pipeline_class, dtype: torch.dtype, local_files_only: bool | None,
                   kwargs: dict[str, Any]):
    if local_files_only is None:
        local_files_only = hub_offline()
    if local_files_only:
        logger.info("loading base model %r from the local model hub cache only (offline)", name)
    else:
        logger.info("fetching base model %r from the Hugging Face model hub (several GB on first use, "
                    "then cached by huggingface_hub)", name)
    try:
        return pipeline_class.from_pretrained(
            name,
            local_files_only=local_files_only,
            **_dtype_kwarg(dtype),
            **{**_safety_checker_off(pipeline_class), **kwargs},
        )
    except _HUB_ERRORS as error:
        reason = first_line(error)
        if local_files_only:
            reason = f"offline, and not in the local cache: {reason}"
        raise ModelFileError(
            f"unknown base model {name!r}: not a local folder, and it could not be fetched from the model "
            f"hub ({reason}). Pass a local folder with a diffusers pipeline, or check the name and your "
            "connection."
        ) from error


def hub_offline() -> bool:
    # Read at call time (huggingface_hub reads it once at import), so a setting made later still counts.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
