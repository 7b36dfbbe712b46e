"""Presets: public weights and their recommended settings, picked by one name (`PRESETS`), and their loading,
checked before anything large loads. (This module imports `models`, never the other way round.)

Every file a preset needs is checked first, from the caches and without the network: the hub files (in
huggingface_hub's cache) and the ArcFace model (insightface's buffalo_l, in `~/.insightface/models`, or a file
the user names). What is missing is fetched by `facestudio download` (`downloads.py`), or at first use with
the user's consent; offline, one error lists all of it with the one command that fetches it, instead of a
stack of hub errors after minutes of loading.
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
        licence: printed once when the preset loads.
        non_commercial: whether the weights forbid commercial use.
        face_pack: the insightface model pack whose recogniser it reads (`downloads.PACKS`); by default
            `buffalo_l` for `recognizer="arcface"`, else none.

    `facestudio download` (`downloads.needs_of`) reads what a preset needs from these fields: `base_model`,
    every `HubFile` field, every `*encoder` hub path, `speed` (a speed model's name) and `face_pack`; fields
    named `style_*` only with a style image. A new field of one of these kinds is downloaded with no other code.
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
    face_pack: str | None = None

    def __post_init__(self):
        if self.face_pack is None:
            object.__setattr__(self, "face_pack", "buffalo_l" if self.recognizer == "arcface" else "")


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


def preset_needs(preset: Preset, *, base_model: str | None = None, with_style: bool = False,
                 arcface_model: str | os.PathLike | None = None):
    """`(hub needs, insightface packs)` of a run of `preset` (`downloads.needs_of`); an ArcFace model named by
    the user (`arcface_model` or `$FACESTUDIO_ARCFACE_MODEL`) replaces the pack."""
    from .downloads import needs_of

    needs, packs = needs_of(preset, base_model=base_model, with_style=with_style)
    if arcface_model or os.environ.get(ARCFACE_ENV):
        packs = []
    return needs, packs


def missing_files(preset: Preset, *, base_model: str | None = None, with_style: bool = False,
                  arcface_model: str | os.PathLike | None = None) -> list[str]:
    """What the preset needs that is not on this machine (judged from the caches, without the network)."""
    from .downloads import missing_offline

    missing = []
    if preset.recognizer == "arcface" and (arcface_model or os.environ.get(ARCFACE_ENV)):
        path = arcface_model_path(arcface_model)
        if not path.is_file():
            missing.append(f"the ArcFace model {path} (insightface buffalo_l's w600k_r50.onnx; `facestudio download "
                           f"buffalo_l --accept-license insightface-noncommercial` puts it in "
                           f"{DEFAULT_ARCFACE_MODEL})")
    needs, packs = preset_needs(preset, base_model=base_model, with_style=with_style, arcface_model=arcface_model)
    return missing + missing_offline(needs, packs)


def download_command(preset: Preset, *, base_model: str | None = None, with_style: bool = False,
                     arcface_model: str | os.PathLike | None = None) -> str:
    """The one command that fetches what `missing_files` lists."""
    from .downloads import INSIGHTFACE_LICENSE

    _, packs = preset_needs(preset, base_model=base_model, with_style=with_style, arcface_model=arcface_model)
    names = [preset.name] + ([base_model] if base_model and base_model != preset.base_model
                             and not Path(base_model).expanduser().exists() else [])
    return (f"facestudio download {' '.join(names)}" + ("" if with_style else " --no-style")
            + (f" --accept-license {INSIGHTFACE_LICENSE}" if packs else ""))


def check_available(preset: Preset, **kwargs) -> None:
    """Raise one `ModelFileError` naming everything `missing_files` finds and the command that fetches it."""
    missing = missing_files(preset, **kwargs)
    if missing:
        raise ModelFileError(f"preset {preset.name} cannot load; missing:\n  - " + "\n  - ".join(missing)
                             + f"\nfetch them with: {download_command(preset, **kwargs)}")


def ensure_available(preset: Preset, *, download: bool | None, accepted: set[str] = frozenset(), **kwargs) -> None:
    """Everything `preset` needs is here, or fetched now with the user's consent: `download=True` (a flag),
    else a prompt on a terminal; `None` off a terminal, or `False`, stops with the command to run. Offline,
    one error names what is missing and the one command that fetches it where there is a connection."""
    import sys

    from . import downloads

    missing = missing_files(preset, **kwargs)
    if not missing:
        return
    command = download_command(preset, **kwargs)
    listed = "\n  - " + "\n  - ".join(missing)
    if not _hub_reachable():
        raise ModelFileError(f"offline, and preset {preset.name} needs files that are not here:{listed}\n"
                             f"where you have a connection, run: {command}")
    if download is None and sys.stdin.isatty() and sys.stderr.isatty():
        print(f"preset {preset.name} needs files that are not here yet:{listed}", file=sys.stderr)
        download = input("Download them now? [y/N] ").strip().lower() in ("y", "yes")
    if not download:
        raise ModelFileError(f"preset {preset.name} needs files that are not downloaded yet:{listed}\n"
                             f"run: {command} (or pass --download to fetch them now)")
    needs, packs = preset_needs(preset, **kwargs)
    downloads.accept_licences(packs, set(accepted))
    result = downloads.plan(needs, packs)
    downloads.describe(result)
    downloads.fetch(result)


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
                         with_style: bool = False, arcface_model: str | os.PathLike | None = None):
    """A `FaceStudioPipeline` with the preset's base model and adapters (and its style adapter if asked)."""
    from .faces import FaceAnalyzer
    from .guidance.public_identity import PublicIdentityConfig
    from .guidance.style import StyleAdapterConfig
    from .models import enable_memory_savers, load_base_pipeline
    from .pipeline import FaceStudioPipeline
    from .pipeline_xl import FaceStudioXLPipeline

    preset = get_preset(name)
    check_available(preset, base_model=base_model, with_style=with_style, arcface_model=arcface_model)
    show_licence(preset)
    if preset.recognizer == "arcface" and getattr(getattr(face_analyzer, "recognizer", None), "name", "") != "arcface":
        from .faces.arcface import ArcFaceRecognizer

        face_analyzer = FaceAnalyzer(recognizer=ArcFaceRecognizer(arcface_model_path(arcface_model)))
    pipeline_class = FaceStudioXLPipeline if preset.sdxl else FaceStudioPipeline
    base = base_model or preset.base_model
    # checked above to be in the cache: diffusers loads it from there without asking the hub again
    hub_base = not Path(base).expanduser().exists()
    pipe = load_base_pipeline(base, pipeline_class, device=device, local_files_only=True if hub_base else None)
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
    return pipe


def _file(hub_file: HubFile) -> tuple[str, str, str | None]:
    return hub_file.repo, hub_file.filename, hub_file.subfolder


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub (huggingface.co or `HF_ENDPOINT`) answers on its port (never when HF_HUB_OFFLINE
    is set; read here, not from models.py, so that no torch import comes before the answer)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    scheme, _, rest = os.environ.get("HF_ENDPOINT", "https://huggingface.co").partition("://")
    host, _, port = rest.split("/")[0].partition(":")
    try:
        with socket.create_connection((host, int(port or (80 if scheme == "http" else 443))), timeout=timeout):
            return True
    except OSError:
        return False
