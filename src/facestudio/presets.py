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

from .errors import FaceStudioError, ModelFileError, first_line
from .request import DEFAULT_TEXT_SCALE
from .sampling.schedulers import DEFAULT_SCHEDULER

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

    @property
    def path(self) -> str:
        """Its path inside the repository."""
        return "/".join(p for p in (self.subfolder, self.filename) if p)


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
_PULID_LICENCE = ("PuLID weights (guozinan/PuLID): Apache-2.0; EVA02-CLIP-L-14-336 (QuanSun/EVA-CLIP): MIT; the "
                  "antelopev2 face recogniser PuLID reads: insightface's non-commercial research licence (downloaded "
                  "only once you accept it, never bundled)")
_LIGHTNING_LICENCE = "SDXL-Lightning UNet (ByteDance/SDXL-Lightning): CreativeML OpenRAIL++-M"
_SDXL_LICENCE = "SDXL base 1.0 (stabilityai): CreativeML OpenRAIL++-M"

@dataclass(frozen=True)
class LocalFile:
    """A file outside the model hub, found by option, environment or default (one that an insightface pack
    holds is fetched with the preset's `face_pack`; others the user gets as `how` says).

    Attributes:
        key: its name among a preset's `local_files` (the argument that gives it).
        what: what it is, for messages.
        option, env, default: the command-line option, the environment variable and the default path.
        how: how to get it.
    """

    key: str
    what: str
    option: str
    env: str
    default: str
    how: str

    def path(self, given: str | os.PathLike | None = None) -> Path:
        return Path(given or os.environ.get(self.env) or self.default).expanduser()


#: antelopev2's recogniser, which PuLID reads (insightface model zoo, non-commercial: downloaded only with its
#: licence accepted, as the preset's `face_pack`).
ANTELOPEV2 = LocalFile("antelopev2", "the antelopev2 face recogniser (glintr100.onnx)", "--antelopev2-model",
                       "FACESTUDIO_ANTELOPEV2_MODEL", "~/.insightface/models/antelopev2/glintr100.onnx",
                       "insightface's antelopev2, non-commercial research only: `facestudio download antelopev2 "
                       "--accept-license insightface-noncommercial`, or pass --antelopev2-model PATH or set "
                       "FACESTUDIO_ANTELOPEV2_MODEL")
#: facexlib's BiSeNet face parser (MIT), a GitHub release rather than a hub file (`downloads.PACKS`).
BISENET = LocalFile("bisenet", "the BiSeNet face parser (parsing_bisenet.pth)", "--bisenet-model",
                    "FACESTUDIO_BISENET_MODEL", "~/.cache/facestudio/parsing_bisenet.pth",
                    "facexlib's release v0.2.0, MIT: `facestudio download bisenet`, or pass --bisenet-model PATH "
                    "or set FACESTUDIO_BISENET_MODEL")

#: SDXL-Lightning's 4-step distilled UNet (Lin et al. 2024), the base of PuLID's own demo and benchmark.
SDXL_LIGHTNING_4STEP_UNET = HubFile("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_unet.safetensors")
#: EVA02-CLIP-L-14-336, the image encoder of PuLID's ID encoder.
EVA02_CLIP_L_336 = HubFile("QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt")

#: The PuLID-FLUX checkpoint (ID encoder `pulid_encoder.*` and cross-attentions `pulid_ca.*`), Apache-2.0.
PULID_FLUX = HubFile("guozinan/PuLID", "pulid_flux_v0.9.1.safetensors")
_PULID_PARTS = ("PuLID-FLUX v0.9.1 weights: Apache-2.0 (guozinan/PuLID); its ID encoder reads EVA02-CLIP-L-14-336 "
                "(MIT) and the antelopev2 face models, which insightface licenses for non-commercial research only")
_FLUX_DEV_LICENCE = ("FLUX.1 [dev]: the FLUX.1 [dev] Non-Commercial License (black-forest-labs/FLUX.1-dev; accept "
                     "it on the hub first). " + _PULID_PARTS)
_FLUX_SCHNELL_LICENCE = "FLUX.1 [schnell]: Apache-2.0 (black-forest-labs/FLUX.1-schnell). " + _PULID_PARTS
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
        unet: a UNet state dict that replaces the base model's (a few-step distilled UNet), or None.
        scheduler, timestep_spacing: the sampler (`sampling.schedulers`) and timestep spacing it was made for
            (None: the base model's spacing).
        encoder_files: further hub files the identity encoder reads, each with what it is.
        local_files: files the user supplies (`LocalFile`), checked with the rest.
        face_pack: the insightface model pack whose recogniser it reads (`downloads.PACKS`); by default
            `buffalo_l` for `recognizer="arcface"`, else none.

    `facestudio download` (`downloads.needs_of`) reads what a preset needs from these fields: `base_model`,
    every `HubFile` field, every `*encoder` hub path, `speed` (a speed model's name), every `(HubFile, what)` of `encoder_files` and `face_pack`; fields
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
    flux: bool = False
    steps: int = 30
    text_guidance_scale: float = DEFAULT_TEXT_SCALE
    reference_guidance_scale: float = DEFAULT_TEXT_SCALE
    shortcut_scale: float = 1.0
    unet: HubFile | None = None
    scheduler: str = DEFAULT_SCHEDULER
    timestep_spacing: str | None = None
    encoder_files: tuple[tuple[HubFile, str], ...] = ()
    local_files: tuple[LocalFile, ...] = ()
    negative_prompt: str = FACEID_NEGATIVE_PROMPT
    speed: str = ""
    distilled_guidance_scale: float | None = None
    start_step: int = 0
    face_pack: str | None = None

    def __post_init__(self):
        if self.face_pack is None:
            object.__setattr__(self, "face_pack", "buffalo_l" if self.recognizer == "arcface" else "")


#: What every PuLID preset's ID encoder reads besides its checkpoint: EVA-CLIP from the hub, antelopev2 (in
#: insightface's pack) and BiSeNet.
PULID_FILES = dict(encoder_files=((EVA02_CLIP_L_336, "EVA-CLIP image encoder"),), local_files=(ANTELOPEV2, BISENET),
                   face_pack="antelopev2")


def _flux_preset(name: str, description: str, base: str, licence: str, non_commercial: bool, steps: int,
                 distilled_guidance_scale: float | None) -> Preset:
    # PuLID-FLUX's recommended use: distilled ("fake") guidance, no true CFG (scales 1), the ID from step 0
    return Preset(name, description, base, PULID_FLUX, "pulid-flux", "", "", licence, non_commercial,
                  style_adapter=None, style_blocks=None, flux=True, steps=steps, text_guidance_scale=1.0,
                  reference_guidance_scale=1.0, distilled_guidance_scale=distilled_guidance_scale,
                  **PULID_FILES)


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
    # PuLID's own demo and DivID-120 numbers: v1 on SDXL-Lightning 4-step, CFG 1.2, id_scale 0.8 (strength);
    # v1 rather than v1.1 there (docs/pulid_v1.1.md: v1.1 "does not perform as well as v1" on Lightning 4-step).
    # The reference samples with DPM++ trailing; SDXL-Lightning is distilled for Euler with trailing timesteps.
    Preset("pulid-sdxl", "PuLID v1 on SDXL-Lightning 4-step: antelopev2 + EVA02-CLIP ID tokens in every "
           "cross-attention layer, 1024 px in 4 steps",
           SDXL_BASE, HubFile("guozinan/PuLID", "pulid_v1.bin"), "pulid", "", "",
           f"{_PULID_LICENCE}; {_LIGHTNING_LICENCE}; {_SDXL_LICENCE}", True, sdxl=True, style_adapter=None,
           style_blocks=STYLE_BLOCKS_SDXL, steps=4, text_guidance_scale=1.2, reference_guidance_scale=1.2,
           unet=SDXL_LIGHTNING_4STEP_UNET, scheduler="euler", timestep_spacing="trailing",
           **PULID_FILES),
    # v1.1 on a non-distilled SDXL, as its demo runs Juggernaut-XL: DPM++ 2M Karras, 25 steps, CFG 7.
    Preset("pulid-sdxl-base", "PuLID v1.1 on SDXL base 1.0: 25 steps at guidance 7, for community SDXL models "
           "(--base-model)",
           SDXL_BASE, HubFile("guozinan/PuLID", "pulid_v1.1.safetensors"), "pulid", "", "",
           f"{_PULID_LICENCE}; {_SDXL_LICENCE}", True, sdxl=True, style_adapter=None, style_blocks=STYLE_BLOCKS_SDXL,
           steps=25,
           text_guidance_scale=7.0, reference_guidance_scale=7.0, scheduler="dpmpp-2m-karras",
           **PULID_FILES),
    _flux_preset("pulid-flux-dev", "PuLID-FLUX v0.9.1 on FLUX.1-dev: 20 steps, distilled guidance 4, 1024 px "
                 "(non-commercial base)", "black-forest-labs/FLUX.1-dev", _FLUX_DEV_LICENCE, True, 20, 4.0),
    _flux_preset("pulid-flux-schnell", "PuLID-FLUX v0.9.1 on FLUX.1-schnell: 4 steps, 1024 px (Apache-2.0 base)",
                 "black-forest-labs/FLUX.1-schnell", _FLUX_SCHNELL_LICENCE, False, 4, None),
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
                 arcface_model: str | os.PathLike | None = None, speed: str | None = None,
                 speed_weights: str | os.PathLike | None = None, local_files: dict | None = None,
                 tiny_decoder: bool = False):
    """`(hub needs, insightface packs)` of a run of `preset` (`downloads.needs_of`, arguments as `missing_files`'s);
    a face model file named by the user (`arcface_model`, `$FACESTUDIO_ARCFACE_MODEL`, or the pack's
    `LocalFile`) replaces the pack, and a speed model's local file its hub file."""
    from .downloads import needs_of

    speed = preset.speed if speed is None else "" if speed == "none" else speed
    needs, packs = needs_of(preset, base_model=base_model, with_style=with_style,
                            speed="" if speed_weights is not None else speed, tiny_decoder=tiny_decoder)
    named = {f.key for f in preset.local_files if _user_path(f, local_files)}
    if preset.recognizer == "arcface" and (arcface_model or os.environ.get(ARCFACE_ENV)):
        named.add(preset.face_pack)
    return needs, [p for p in packs if p.name not in named]


def missing_files(preset: Preset, *, base_model: str | None = None, with_style: bool = False,
                  arcface_model: str | os.PathLike | None = None, speed: str | None = None,
                  speed_weights: str | os.PathLike | None = None, local_files: dict | None = None,
                  tiny_decoder: bool = False) -> list[str]:
    """What the preset needs that is not on this machine (judged from the caches, without the network), each
    with what it is. `speed`: the speed model asked for (None: the preset's own, "" or "none": none);
    `speed_weights`: its local file instead of the hub's; `tiny_decoder`: TAESD too (`--decoder tiny`).
    `local_files` gives the paths of the preset's `LocalFile`s by key (else their environment variables or defaults); one that `facestudio download` fetches
    (`downloads.PACKS`) is looked for where it puts it, unless the user names it."""
    from .downloads import PACKS, missing_offline

    missing = []
    for f in preset.local_files:
        if f.key in PACKS and not _user_path(f, local_files):
            continue  # a release file (missing_offline names it)
        path = f.path((local_files or {}).get(f.key))
        if not (path.is_file() or (path.is_dir() and any(path.iterdir()))):
            missing.append(f"{f.what} {path} ({f.how})")
    if preset.recognizer == "arcface" and (arcface_model or os.environ.get(ARCFACE_ENV)):
        path = arcface_model_path(arcface_model)
        if not path.is_file():
            missing.append(f"the ArcFace model {path} (insightface buffalo_l's w600k_r50.onnx; `facestudio download "
                           f"buffalo_l --accept-license insightface-noncommercial` puts it in "
                           f"{DEFAULT_ARCFACE_MODEL})")
    needs, packs = preset_needs(preset, base_model=base_model, with_style=with_style, arcface_model=arcface_model,
                                speed=speed, speed_weights=speed_weights, local_files=local_files,
                                tiny_decoder=tiny_decoder)
    return missing + missing_offline(needs, packs)


def _user_path(f: LocalFile, local_files: dict | None) -> bool:
    """Whether the user named `f`'s path (an option or its environment variable)."""
    return bool((local_files or {}).get(f.key) or os.environ.get(f.env))


def download_command(preset: Preset, *, base_model: str | None = None, with_style: bool = False, **kwargs) -> str:
    """The one command that fetches what `missing_files` lists (`kwargs`: the rest of its arguments)."""
    from .downloads import INSIGHTFACE_LICENSE

    _, packs = preset_needs(preset, base_model=base_model, with_style=with_style, **kwargs)
    names = [preset.name] + ([base_model] if base_model and base_model != preset.base_model
                             and not Path(base_model).expanduser().exists() else [])
    speed = kwargs.get("speed")
    if speed not in (None, "", "none", preset.speed) and kwargs.get("speed_weights") is None:
        names.append(speed)
    if kwargs.get("tiny_decoder") and not preset.flux:
        from .downloads import tiny_decoder_name

        names.append(tiny_decoder_name(preset.sdxl))
    return (f"facestudio download {' '.join(names)}" + ("" if with_style else " --no-style")
            + (f" --accept-license {INSIGHTFACE_LICENSE}" if any(p.licence for p in packs) else ""))


def check_speed_available(speed: str, weights: str | os.PathLike | None = None) -> None:
    """Raise one `ModelFileError` when the speed model's file is neither at `weights`, cached nor reachable."""
    from .downloads import missing_offline, needs_of_name

    if weights is not None:  # a local file is checked when it loads
        return
    missing = missing_offline(*needs_of_name(speed))
    if missing and not _hub_reachable():
        raise ModelFileError(f"speed model {speed} cannot load; offline, and missing:\n  - " + "\n  - ".join(missing)
                             + f"\nwhere you have a connection, run: facestudio download {speed}")


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
                         with_style: bool = False, arcface_model: str | os.PathLike | None = None,
                         speed: str | None = None, speed_weights: str | os.PathLike | None = None,
                         pulid_mode: str | None = None, local_files: dict | None = None,
                         pulid_sizes: str = "published", download: bool | None = True,
                         accept_license: tuple[str, ...] = (), **memory):
    """A `FaceStudioPipeline` with the preset's base model (its UNet and sampler) and adapters (and its style
    adapter if asked), and a speed model (`speed`; None: the preset's own, "none": none) from the hub or
    `speed_weights`; `pulid_mode` is a PuLID preset's mode (`guidance.kinds.pulid.MODES`, default fidelity).
    For a FLUX preset, a `FaceStudioFluxPipeline` with PuLID-FLUX (`memory`: `sequential_offload`, `quantize`,
    see `models_flux.enable_flux_memory_modes`). Files not here yet are fetched first (`ensure_available`:
    `download=False` stops with the command that fetches them; insightface's face models need their licence in
    `accept_license`)."""
    from .faces import FaceAnalyzer
    from .guidance.public_identity import PublicIdentityConfig
    from .guidance.style import StyleAdapterConfig
    from .models import enable_memory_savers, load_base_pipeline
    from .pipeline import FaceStudioPipeline
    from .pipeline_xl import FaceStudioXLPipeline

    preset = get_preset(name)
    ensure_available(preset, download=download, accepted=set(accept_license), base_model=base_model,
                     with_style=with_style, arcface_model=arcface_model, speed=speed, speed_weights=speed_weights,
                     local_files=local_files)
    show_licence(preset)
    if preset.flux:
        return _load_flux_preset(preset, base_model=base_model, device=device, cpu_offload=cpu_offload,
                                 vae_tiling=vae_tiling, face_analyzer=face_analyzer, local_files=local_files,
                                 pulid_sizes=pulid_sizes, **memory)
    if preset.recognizer == "arcface" and getattr(getattr(face_analyzer, "recognizer", None), "name", "") != "arcface":
        from .faces.arcface import ArcFaceRecognizer

        face_analyzer = FaceAnalyzer(recognizer=ArcFaceRecognizer(arcface_model_path(arcface_model)))
    pipeline_class = FaceStudioXLPipeline if preset.sdxl else FaceStudioPipeline
    base = base_model or preset.base_model
    # checked above to be in the cache: diffusers loads it from there without asking the hub again
    hub_base = not Path(base).expanduser().exists()
    pipe = load_base_pipeline(base, pipeline_class, device=device, local_files_only=True if hub_base else None)
    if preset.unet is not None:
        _load_unet_weights(pipe, preset.unet)
    if preset.scheduler != DEFAULT_SCHEDULER or preset.timestep_spacing:
        from .sampling.schedulers import make_scheduler

        pipe.scheduler = make_scheduler(preset.scheduler, pipe.scheduler, timestep_spacing=preset.timestep_spacing)
    enable_memory_savers(pipe, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
    cross_dim = pipe.unet.config.cross_attention_dim
    if preset.projection == "pulid":
        from .guidance.kinds.pulid import PuLIDConfig, version_of_file

        files = {f.key: str(f.path((local_files or {}).get(f.key))) for f in preset.local_files}
        identity_config = PuLIDConfig(version=version_of_file(preset.adapter.filename), mode=pulid_mode or "fidelity",
                                      cross_attention_dim=cross_dim, eva_clip=_download(EVA02_CLIP_L_336),
                                      sizes=pulid_sizes, **files)
    else:
        identity_config = PublicIdentityConfig(projection=preset.projection, recognizer=preset.recognizer,
                                               image_encoder=preset.image_encoder,
                                               shortcut_scale=preset.shortcut_scale, cross_attention_dim=cross_dim)
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


def _download(hub_file: HubFile) -> str:
    """The local path of a hub file (from the cache; fetched first where the hub is reachable)."""
    from huggingface_hub import hf_hub_download

    from .models import hub_offline

    try:
        return hf_hub_download(hub_file.repo, hub_file.path, local_files_only=hub_offline())
    except (OSError, ValueError) as error:
        raise ModelFileError(f"could not fetch {hub_file}: {first_line(error)}") from error


def _load_unet_weights(pipe, hub_file: HubFile) -> None:
    """Replace the UNet's weights with a published state dict of the same architecture (SDXL-Lightning's)."""
    from safetensors.torch import load_file

    path = _download(hub_file)
    try:
        missing, unexpected = pipe.unet.load_state_dict(load_file(path), strict=False)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"could not load the UNet {hub_file}: {first_line(error)}") from error
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ModelFileError(f"the UNet {hub_file} does not fit the base model's UNet: "
                             f"{'missing' if missing else 'unexpected'} key {first}")


def _load_flux_preset(preset: Preset, *, base_model, device, cpu_offload, vae_tiling, face_analyzer, local_files,
                      pulid_sizes: str = "published", **memory):
    """FLUX.1 in bfloat16 on a GPU (float16 overflows in FLUX), PuLID-FLUX loaded with its ID encoder (from the
    checkpoint's `pulid_encoder.*`, EVA-CLIP from the hub, BiSeNet and antelopev2 as the user's files), then the
    memory modes (after loading, so that offloading hooks cover the cross-attentions too). `pulid_sizes="tiny"`:
    the test widths of `guidance.pulid.encoder.tiny_encoder_config` and a 2-head cross-attention."""
    import torch

    from .guidance.kinds.pulid_flux import PuLIDFluxConfig
    from .guidance.pulid.encoder import PuLIDEncoder
    from .models import choose_device, load_base_pipeline
    from .models_flux import enable_flux_memory_modes
    from .pipeline_flux import FaceStudioFluxPipeline

    device = choose_device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # loaded on the CPU: FLUX.1-dev in bf16 alone is more than a 24 GB card holds before offloading starts
    pipe = load_base_pipeline(base_model or preset.base_model, FaceStudioFluxPipeline, device="cpu", dtype=dtype)
    checkpoint = _download(preset.adapter)
    files = {f.key: str(f.path((local_files or {}).get(f.key))) for f in preset.local_files}
    # the ID former from the checkpoint's pulid_encoder.* (every key checked); at "tiny" 2048-wide test tokens
    encoder = PuLIDEncoder.from_files("flux-v0.9.1", checkpoint, _download(EVA02_CLIP_L_336), files["bisenet"],
                                      files["antelopev2"], sizes=pulid_sizes, width=2048)
    if device.type == "cuda":  # PuLID-FLUX runs its encoder in bf16 (BiSeNet stays float32)
        encoder.to(device, dtype)
    config = PuLIDFluxConfig() if pulid_sizes == "published" else PuLIDFluxConfig(heads=2, head_dim=16)
    pipe.load_pulid_flux(checkpoint, config, encoder=encoder, face_analyzer=face_analyzer)
    enable_flux_memory_modes(pipe, device=device, cpu_offload=cpu_offload, vae_tiling=vae_tiling, **memory)
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
