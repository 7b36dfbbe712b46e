"""Presets: public weights and their recommended settings, picked by one name (`PRESETS`), and their loading,
checked before anything large loads. (This module imports `models`, never the other way round.)

Every file a preset needs is checked first: the ArcFace model (a local file the user supplies: never
downloaded or bundled) and the hub files (in huggingface_hub's cache, or reachable). When something is
missing and the hub cannot be reached, one error lists all of it with the command that fetches it, instead
of a stack of hub errors after minutes of loading.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FaceStudioError, ModelFileError
from .request import DEFAULT_TEXT_SCALE

logger = logging.getLogger(__name__)

#: Where insightface keeps buffalo_l after its first run; the ArcFace model is looked for here by default.
DEFAULT_ARCFACE_MODEL = Path("~/.insightface/models/buffalo_l/w600k_r50.onnx")

#: Environment variable naming the ArcFace model file.
ARCFACE_ENV = "FACESTUDIO_ARCFACE_MODEL"

_licences_shown: set[str] = set()

# ---------------------------------------------------------------------------------------------------------
# The presets
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """One file of a model hub repository."""

    repo: str
    filename: str
    subfolder: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.repo, self.subfolder, self.filename) if p)


#: CLIP ViT-H/14 (laion2B-s32B-b79K) as h94/IP-Adapter ships it: the image encoder of every SD 1.5 preset.
VIT_H_ENCODER = "h94/IP-Adapter/models/image_encoder"

#: The base model of the SD 1.5 presets.
SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"

#: InstantStyle's block scales for SDXL: the style image acts only in the layer that carries style
#: (`up_blocks.0.attentions.1`), so it does not override the layout or the identity.
STYLE_BLOCKS_SDXL = {"up": {"block_0": [0.0, 1.0, 0.0]}}

#: The same idea for SD 1.5, whose `up_blocks.0` has no attention: the middle layer of its first up-block with
#: attention (`up_blocks.1.attentions.1`, the same place in the network). InstantStyle measured SDXL only;
#: this analogue has not been checked on real SD 1.5 weights here.
STYLE_BLOCKS_SD15 = {"up": {"block_1": [0.0, 1.0, 0.0]}}

#: The base model of the SDXL presets.
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"

_FACEID_LICENCE = ("IP-Adapter-FaceID weights: non-commercial research use only (they are trained on insightface's "
                   "buffalo_l ArcFace embeddings, whose models are non-commercial); the ArcFace model itself: "
                   "insightface's non-commercial research licence")
_APACHE_LICENCE = "IP-Adapter weights: Apache-2.0 (h94/IP-Adapter); CLIP ViT-H/14: MIT"
#: The negative prompt of the IP-Adapter-FaceID model card's examples (h94/IP-Adapter-FaceID).
FACEID_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"


@dataclass(frozen=True)
class Preset:
    """A named combination of public weights and the settings they work best with.

    Attributes:
        name: what `--preset` takes.
        base_model: hub id of the base pipeline (replaceable by a local folder of the same architecture).
        adapter: the identity adapter file.
        projection: its kind's name (`facestudio.guidance.kinds.public_identity_kinds()`).
        recognizer: `"arcface"` when the adapter reads ArcFace embeddings, else `""`.
        image_encoder: CLIP vision encoder of the adapter's detail tokens, or `""`.
        style_adapter, style_encoder, style_blocks: the plain IP-Adapter used for a style image, with the
            per-block scales that keep it out of layout.
        steps, text_guidance_scale, reference_guidance_scale, shortcut_scale: recommended settings.
        negative_prompt: the negative prompt used when a request gives none ("" for none).
        speed: a speed model (`sampling.speed.SPEED_MODELS`) used unless a request names another, or "".
        licence: printed once when the preset loads.
        non_commercial: whether the weights forbid commercial use.
    """

    name: str
    description: str
    base_model: str
    adapter: HubFile
    projection: str
    recognizer: str
    image_encoder: str
    licence: str
    non_commercial: bool
    style_adapter: HubFile | None = HubFile("h94/IP-Adapter", "ip-adapter_sd15.safetensors", "models")
    style_encoder: str = VIT_H_ENCODER
    style_blocks: dict | None = field(default_factory=lambda: STYLE_BLOCKS_SD15)
    style_embed_dim: int = 1024
    sdxl: bool = False
    steps: int = 30
    text_guidance_scale: float = DEFAULT_TEXT_SCALE
    reference_guidance_scale: float = DEFAULT_TEXT_SCALE
    shortcut_scale: float = 1.0
    negative_prompt: str = FACEID_NEGATIVE_PROMPT
    speed: str = ""


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("faceid-plusv2-sd15", "IP-Adapter-FaceID-PlusV2 on SD 1.5: ArcFace identity + CLIP face detail",
           SD15_BASE, HubFile("h94/IP-Adapter-FaceID", "ip-adapter-faceid-plusv2_sd15.bin"), "faceid-plusv2",
           "arcface", VIT_H_ENCODER, _FACEID_LICENCE, True),
    Preset("faceid-sd15", "IP-Adapter-FaceID on SD 1.5: ArcFace identity only (with its LoRA)",
           SD15_BASE, HubFile("h94/IP-Adapter-FaceID", "ip-adapter-faceid_sd15.bin"), "faceid",
           "arcface", "", _FACEID_LICENCE, True),
    Preset("plus-face-sd15", "IP-Adapter Plus-Face on SD 1.5: CLIP features of the aligned face, no face recogniser",
           SD15_BASE, HubFile("h94/IP-Adapter", "ip-adapter-plus-face_sd15.safetensors", "models"), "plus-face",
           "", VIT_H_ENCODER, _APACHE_LICENCE, False),
    Preset("faceid-portrait-sd15", "IP-Adapter-FaceID-Portrait on SD 1.5: ArcFace identity of several photos "
           "side by side (up to 5), no LoRA",
           SD15_BASE, HubFile("h94/IP-Adapter-FaceID", "ip-adapter-faceid-portrait_sd15.bin"), "faceid-portrait",
           "arcface", "", _FACEID_LICENCE, True),
    Preset("faceid-sdxl", "IP-Adapter-FaceID on SDXL: ArcFace identity only (with its LoRA), 1024 px",
           SDXL_BASE, HubFile("h94/IP-Adapter-FaceID", "ip-adapter-faceid_sdxl.bin"), "faceid",
           "arcface", "", _FACEID_LICENCE, True, sdxl=True,
           style_adapter=HubFile("h94/IP-Adapter", "ip-adapter_sdxl.safetensors", "sdxl_models"),
           style_encoder="h94/IP-Adapter/sdxl_models/image_encoder", style_embed_dim=1280,
           style_blocks=STYLE_BLOCKS_SDXL),
)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise FaceStudioError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def arcface_model_path(given: str | os.PathLike | None = None) -> Path:
    """The ArcFace model file: `given`, else `$FACESTUDIO_ARCFACE_MODEL`, else insightface's own location."""
    return Path(given or os.environ.get(ARCFACE_ENV) or DEFAULT_ARCFACE_MODEL).expanduser()


def missing_files(preset: Preset, *, base_model: str | None = None, with_style: bool = False,
                  arcface_model: str | os.PathLike | None = None, speed: str | None = None,
                  speed_weights: str | os.PathLike | None = None) -> list[str]:
    """What the preset needs that is not here, each with how to get it; empty when all can be had.
    `speed`: the speed model asked for (None: the preset's own, "" or "none": none); `speed_weights`: its
    local file instead of the hub's."""
    missing = []
    if preset.recognizer == "arcface":
        path = arcface_model_path(arcface_model)
        if not path.is_file():
            missing.append(f"the ArcFace model {path} (insightface buffalo_l's w600k_r50.onnx, non-commercial; "
                           f"unzip buffalo_l.zip from insightface's model zoo and pass --arcface-model PATH or set "
                           f"{ARCFACE_ENV})")
    # (a file that shows the thing is in the cache, what it is, the command that fetches all of it)
    needed = [(f, "adapter", f"hf download {f.repo} {_path(f)}") for f in (preset.adapter,)]
    base = base_model or preset.base_model
    if not Path(base).expanduser().is_dir():
        needed.append((HubFile(base, "model_index.json"), "base model", f"hf download {base}"))
    encoders = {preset.image_encoder} if preset.image_encoder else set()
    if with_style and preset.style_adapter is not None:
        f = preset.style_adapter
        needed.append((f, "style adapter", f"hf download {f.repo} {_path(f)}"))
        encoders.add(preset.style_encoder)
    for encoder in sorted(encoders):
        if not Path(encoder).expanduser().is_dir():
            from .guidance.style import split_hub_path

            repo, subfolder = split_hub_path(encoder)
            include = f" --include '{subfolder}/*'" if subfolder else ""
            needed.append((HubFile(repo, "config.json", subfolder), "image encoder", f"hf download {repo}{include}"))
    speed = preset.speed if speed is None else "" if speed == "none" else speed
    needed += _speed_needs(speed, speed_weights)
    return missing + _absent(needed)


def check_speed_available(speed: str, weights: str | os.PathLike | None = None) -> None:
    """Raise one `ModelFileError` when the speed model's file is neither at `weights`, cached nor reachable."""
    missing = _absent(_speed_needs(speed, weights))
    if missing:
        raise ModelFileError(f"speed model {speed} cannot load; missing:\n  - " + "\n  - ".join(missing))


def _speed_needs(speed: str, weights) -> list[tuple[HubFile, str, str]]:
    if not speed or weights is not None:  # a local file is checked when it loads
        return []
    from .sampling.speed import get_speed_model

    f = get_speed_model(speed).file
    return [(f, f"speed model {speed}", f"hf download {f.repo} {_path(f)}")]


def _absent(needed: list[tuple[HubFile, str, str]]) -> list[str]:
    """The entries of `needed` (file, what, command) neither cached nor reachable, each with how to get it."""
    absent = [(f, what, command) for f, what, command in needed if not _cached(f)]
    if absent and not _hub_reachable():
        return [f"{what} {f.repo} (offline, and {_path(f)} is not in the model hub cache); where you have a "
                f"connection: {command}" for f, what, command in absent]
    return []


def check_available(preset: Preset, **kwargs) -> None:
    """Raise one `ModelFileError` naming everything `missing_files` finds."""
    missing = missing_files(preset, **kwargs)
    if missing:
        raise ModelFileError(f"preset {preset.name} cannot load; missing:\n  - " + "\n  - ".join(missing))


def show_licence(preset: Preset) -> None:
    """Say the preset's licence, once per process."""
    if preset.name in _licences_shown:
        return
    _licences_shown.add(preset.name)
    if preset.non_commercial:
        logger.warning("preset %s: NON-COMMERCIAL weights. %s", preset.name, preset.licence)
    else:
        logger.info("preset %s: %s", preset.name, preset.licence)


def load_preset_pipeline(name: str, *, base_model: str | None = None, device: str | None = None,
                         cpu_offload: bool = False, vae_tiling: bool = False, face_analyzer=None,
                         with_style: bool = False, arcface_model: str | os.PathLike | None = None,
                         speed: str | None = None, speed_weights: str | os.PathLike | None = None):
    """A `FaceStudioPipeline` with the preset's base model and adapters (and its style adapter if asked), and a
    speed model (`speed`; None: the preset's own, "none": none) from the hub or `speed_weights`."""
    from .faces import FaceAnalyzer
    from .guidance.public_identity import PublicIdentityConfig
    from .guidance.style import StyleAdapterConfig
    from .models import enable_memory_savers, load_base_pipeline
    from .pipeline import FaceStudioPipeline
    from .pipeline_xl import FaceStudioXLPipeline

    preset = get_preset(name)
    check_available(preset, base_model=base_model, with_style=with_style, arcface_model=arcface_model, speed=speed,
                    speed_weights=speed_weights)
    show_licence(preset)
    if preset.recognizer == "arcface" and getattr(getattr(face_analyzer, "recognizer", None), "name", "") != "arcface":
        from .faces.arcface import ArcFaceRecognizer

        face_analyzer = FaceAnalyzer(recognizer=ArcFaceRecognizer(arcface_model_path(arcface_model)))
    pipeline_class = FaceStudioXLPipeline if preset.sdxl else FaceStudioPipeline
    pipe = load_base_pipeline(base_model or preset.base_model, pipeline_class, device=device)
    enable_memory_savers(pipe, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
    cross_dim = pipe.unet.config.cross_attention_dim
    identity_config = PublicIdentityConfig(projection=preset.projection, recognizer=preset.recognizer,
                                           image_encoder=preset.image_encoder, shortcut_scale=preset.shortcut_scale,
                                           cross_attention_dim=cross_dim)
    kwargs = {}
    if with_style and preset.style_adapter is not None:
        kwargs = dict(style=_file(preset.style_adapter), style_config=StyleAdapterConfig(
            image_encoder=preset.style_encoder, image_embed_dim=preset.style_embed_dim, cross_attention_dim=cross_dim,
            block_scales=preset.style_blocks))
    pipe.load_public_adapters(_file(preset.adapter), identity_config=identity_config, face_analyzer=face_analyzer,
                              **kwargs)
    pipe.preset = preset
    speed = preset.speed if speed is None else "" if speed == "none" else speed
    if speed:
        from .sampling.speed import load_speed_model

        load_speed_model(pipe, speed, weights=speed_weights)
    return pipe


def _file(hub_file: HubFile) -> tuple[str, str, str | None]:
    return hub_file.repo, hub_file.filename, hub_file.subfolder


def _path(hub_file: HubFile) -> str:
    return "/".join(p for p in (hub_file.subfolder, hub_file.filename) if p)


def _cached(hub_file: HubFile) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_file.repo, _path(hub_file)), str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on its HTTPS port (never when HF_HUB_OFFLINE is set)."""
    from .models import hub_offline

    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False
