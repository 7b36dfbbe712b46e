"""`facestudio generate` and `facestudio mix`: images of the people in the photos.

Every setting, photo, face and adapter is checked before the base model loads, so a mistake costs seconds;
images are written one by one as they are made, never over an existing file.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..errors import FaceStudioError
from ..files import check_free_space, existing_ancestor
from ..loading import TINY, adapter_folder, load_generation_pipeline, style_beside
from ..presets import PRESETS
from ..regions.sources import CHOICES, as_region
from ..sampling.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from ..sampling.speed import SPEED_MODELS, get_speed_model
from ..request import (DEFAULT_SIDE, DEFAULT_STEPS, DEFAULT_TEXT_SCALE, SDXL_DEFAULT_SIDE, GenerationSettings,
                       IdentityInput)
from . import EXIT_OK, MIN_IMAGE_SIDE, quiet_libraries
from .output import png_bytes_bound, removed_if_left_empty

logger = logging.getLogger(__name__)

#: PuLID's modes (`guidance.kinds.pulid.MODES`, restated so that the CLI answers before torch is imported).
PULID_MODES = ("fidelity", "extremely-style", "neutral")
#: Every preset's files outside the model hub (`presets.LocalFile`), once each.
LOCAL_FILES = tuple(dict.fromkeys(f for p in PRESETS.values() for f in p.local_files))


def add_commands(commands) -> None:
    generate = commands.add_parser(
        "generate", help="make images of the people in your photos",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate images from a prompt, with the people of the --identity photos in them.\n\n"
                    "Images are written as OUTPUT/NNN-seedS.png, NNN continuing after the highest number\n"
                    "already in the folder (nothing is overwritten); with several images also\n"
                    "contact-sheet.png (contact-sheet-FIRST-LAST.png if that name is taken). Every file\n"
                    "carries its settings and an AI-generated label in its metadata.\n"
                    "Only use photos of people who agreed to it.",
        epilog="example: facestudio generate --prompt 'an astronaut, photo' --identity me.jpg,me2.jpg \\\n"
               "           --base-model ./sd15 --adapter ./faceid-adapter --num-images 4")
    generate.add_argument("--prompt", required=True, help="what to draw")
    generate.add_argument("--negative-prompt", metavar="TEXT",
                          help="what to avoid (default: the preset's; '' for none)")
    generate.add_argument("--identity", action="append", default=[], metavar="PHOTO[,PHOTO...]",
                          help="one person: a photo, or several comma-separated photos of the same person "
                               "(pooled). Repeat for each person")
    generate.add_argument("--face", action="append", default=[], metavar="N[,N...]",
                          help="which face of that person's photos to use (0 is the largest): one per "
                               "--identity in order (comma-separated, or the option repeated), or one for all; "
                               "needed when a photo shows several faces of similar size")
    generate.add_argument("--region", action="append", default=[], metavar="x0,y0,x1,y1",
                          help="box in output pixels where person i goes, in --identity order (at most one "
                               "per identity; default: the whole image for one person, else left-to-right "
                               "strips)")
    generate.add_argument("--strength", action="append", default=[], metavar="S[,S...]",
                          help="identity strength per person in --identity order (comma-separated, or the "
                               "option repeated), or one for all (default 1.0; 0 turns a person off)")
    generate.add_argument("--mix", action="append", metavar="W1,W2,...",
                          help="blend all identities into one face with these weights, one per --identity in "
                               "order (comma-separated, or the option repeated), summing to 1")
    generate.add_argument("--style", metavar="IMAGE", help="an image whose look to follow (needs a style adapter)")
    generate.add_argument("--style-strength", type=float, default=1.0, metavar="S",
                          help="how strongly --style acts (default 1.0)")
    generate.add_argument("--scene", metavar="IMAGE",
                          help="put the identities into the faces of this image (the largest faces, left to "
                               "right); the rest of it is kept. The default size is the scene's")
    generate.add_argument("--scene-faces", metavar="i,j,...",
                          help="which faces of --scene (0 is the largest) get identity 1, 2, ...")
    generate.add_argument("--regions", choices=list(CHOICES), default=None,
                          help="what places every person: 'split' (strips left to right), 'segment' (the people "
                               "of --scene or --style as a selfie-segmentation model sees them, split by nearest "
                               "face; needs the segment extra); default 'auto': --region boxes, the scene's faces, "
                               "the style image's people or strips")
    _add_generation_options(generate)
    generate.set_defaults(run=run_generate)

    mix = commands.add_parser(
        "mix", help="one face blended from two people",
        description="Shorthand for `generate --identity A --identity B --mix 1-R,R`: one face that is a blend "
                    "of A and B. Each of A and B may be several comma-separated photos of that person.")
    mix.add_argument("person_a", metavar="A", help="photo(s) of the first person")
    mix.add_argument("person_b", metavar="B", help="photo(s) of the second person")
    mix.add_argument("--ratio", type=float, default=0.5, metavar="R",
                     help="B's share of the blend, from 0 (all A) to 1 (all B); A gets 1-R (default 0.5)")
    mix.add_argument("--prompt", default=MIX_PROMPT, help=f"what to draw (default {MIX_PROMPT!r})")
    mix.add_argument("--negative-prompt", metavar="TEXT", help="what to avoid (default: the preset's; '' for none)")
    mix.add_argument("--face", action="append", default=[], metavar="N[,N]",
                     help="which face of the photos to use (0 is the largest): one for both, or one for A and "
                          "one for B (comma-separated, or the option repeated)")
    mix.add_argument("--strength", type=float, default=1.0, metavar="S", help="identity strength (default 1.0)")
    _add_generation_options(mix, style=False)
    mix.set_defaults(run=run_mix)

    listing = commands.add_parser("speed-models", help="list the few-step speed LoRAs --speed takes",
                                  description="The few-step speed LoRAs --speed takes: base, sampler, steps, "
                                              "guidance scale, hub file and licence.")
    listing.set_defaults(run=run_speed_models)


#: Prompt of `facestudio mix` when none is given.
MIX_PROMPT = "a portrait photo of a person"


def _add_generation_options(parser: argparse.ArgumentParser, style: bool = True) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help="public weights picked by name, with their recommended settings: "
                             + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
                             + ". FaceID and PuLID presets are non-commercial (their face recognisers)")
    models.add_argument("--pulid-mode", choices=PULID_MODES, metavar="MODE",
                        help="PuLID presets: fidelity (default), extremely-style (more prompt, less likeness) or "
                             "neutral (PuLID's plain ID attention)")
    add_local_file_options(models)
    models.add_argument("--pulid-sizes", choices=["published", "tiny"], default="published",
                        help="tiny: PuLID's encoder at test widths, for tiny checkpoints (smoke tests only)")
    models.add_argument("--base-model", metavar="tiny|FOLDER|HUB_ID",
                        help="the Stable Diffusion 1.x/2.x pipeline: a local folder (diffusers layout), a model "
                             "hub id (downloaded once), or 'tiny' (a random model: smoke tests only). Needed "
                             "without --preset; with it, replaces the preset's base model")
    models.add_argument("--arcface-model", metavar="FILE",
                        help="insightface buffalo_l's w600k_r50.onnx, for the FaceID presets (default: "
                             "$FACESTUDIO_ARCFACE_MODEL, else ~/.insightface/models/buffalo_l/w600k_r50.onnx)")
    add_download_options(models)
    models.add_argument("--adapter", metavar="FOLDER|tiny",
                        help="identity adapter folder (FOLDER/identity as written by save_adapters, or a folder "
                             "holding facestudio_adapter.json); 'tiny': an untrained adapter, for smoke tests "
                             "only. Needed with --identity")
    if style:
        models.add_argument("--style-adapter", metavar="FOLDER|tiny",
                            help="style adapter folder (FOLDER/style or a folder holding facestudio_adapter.json); "
                                 "default: the style/ beside --adapter's identity/, if there is one")
    models.add_argument("--speed", metavar="NAME",
                        help="a few-step speed LoRA with its sampler, steps and guidance (see `facestudio "
                             "speed-models`): " + ", ".join(SPEED_MODELS) + "; 'none' turns a preset's off")
    models.add_argument("--speed-weights", metavar="FILE",
                        help="the --speed LoRA from this local file (or folder) instead of the model hub")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, metavar="N",
                          help=f"denoising steps (default {DEFAULT_STEPS}, or the preset's)")
    sampling.add_argument("--scheduler", choices=list(SCHEDULERS), metavar="NAME",
                          help="the sampler: " + "; ".join(f"{s.name}: {s.description}" for s in SCHEDULERS.values())
                               + f" (default {DEFAULT_SCHEDULER}, or the speed model's)")
    sampling.add_argument("--seed", type=int, default=0, metavar="S",
                          help="seed of the first image; image i uses S+i (default 0)")
    sampling.add_argument("--text-scale", type=float, metavar="G",
                          help=f"guidance scale of the prompt (default {DEFAULT_TEXT_SCALE}, or the preset's)")
    sampling.add_argument("--reference-scale", type=float, metavar="G",
                          help="guidance scale of the identities and style (default: --text-scale)")
    sampling.add_argument("--reference-start", type=float, metavar="T",
                          help="FlashFace's late reference guidance: --reference-scale acts only at timesteps <= T "
                               "(of 1000; FlashFace uses 600); before, the identities join the prompt in plain "
                               "text guidance (default: every step)")
    sampling.add_argument("--distilled-guidance", type=float, metavar="G",
                          help="FLUX.1-dev's built-in guidance (default: the preset's, else 3.5); FLUX only. With "
                               "FLUX presets --text-scale is 1 (no true CFG); above 1 it runs true CFG")
    sampling.add_argument("--start-step", type=int, default=None, metavar="N",
                          help="the first step the identities act in (PuLID-FLUX's start_step; default 0): later "
                               "leaves more to the prompt, earlier keeps more likeness; FLUX only")
    sampling.add_argument("--shortcut-scale", type=float, metavar="S",
                          help="FaceID-PlusV2's weight of the CLIP face detail (IP-Adapter's s_scale; default: the "
                               "preset's, 1.0)")
    for option, what in (("--width", "width"), ("--height", "height")):
        sampling.add_argument(option, type=int, metavar=what[0].upper(), help=f"image {what}, a multiple of 8, of 16 "
                              f"for FLUX (default {DEFAULT_SIDE}; {SDXL_DEFAULT_SIDE} with an SDXL or FLUX preset)")
    sampling.add_argument("--num-images", type=int, default=1, metavar="N", help="how many images (default 1)")
    output = parser.add_argument_group("output and hardware")
    output.add_argument("--output", default="facestudio-out", metavar="DIR",
                        help="folder for the images (default ./facestudio-out)")
    output.add_argument("--device", choices=("cpu", "cuda", "mps"),
                        help="where to run (default: CUDA, else MPS, else the CPU)")
    output.add_argument("--cpu-offload", action="store_true",
                        help="keep each model on the CPU until it runs (CUDA only; saves GPU memory)")
    output.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles (saves memory)")
    output.add_argument("--sequential-offload", action="store_true",
                        help="FLUX presets: move every layer to the GPU as it runs (least memory, slowest; CUDA)")
    output.add_argument("--quantize", choices=("int8", "fp8"),
                        help="FLUX presets: quantise the transformer's weights with optimum-quanto (about half its "
                             "memory; needs the quantize extra; fp8 is fast on GPUs of compute capability 8.9+)")
    output.add_argument("--decoder", choices=("full", "tiny"), default="full",
                        help="'tiny': decode with TAESD (madebyollin/taesd, taesdxl for SDXL): much faster on a CPU, "
                             "a little less fine detail (default 'full': the model's VAE)")
    output.add_argument("--tiny-decoder", metavar="FOLDER|HUB_ID",
                        help="the AutoencoderTiny for --decoder tiny (default the TAESD of the base model)")


#: Image files written by `generate`: `NNN-seedS.png`.
_IMAGE_NAME = re.compile(r"^(\d{3,})-seed\d+\.png$")


def run_generate(args) -> int:
    mix = None if args.mix is None else _listed(args.mix, "--mix", float)
    return _run_generation(args, mix, command="generate")


def run_speed_models(args) -> int:
    for m in SPEED_MODELS.values():
        spacing = f", {m.timestep_spacing} spacing" if m.timestep_spacing else ""
        print(f"{m.name}: {m.description}\n    {'SDXL' if m.sdxl else 'SD 1.5'}; {m.steps} steps of {m.scheduler}"
              f"{spacing}, guidance {m.guidance_scale:g}, LoRA weight {m.weight:g}\n    file: {m.file}\n"
              f"    licence: {m.licence}")
    return EXIT_OK


def run_mix(args) -> int:
    if not (math.isfinite(args.ratio) and 0.0 <= args.ratio <= 1.0):
        raise FaceStudioError(f"--ratio {args.ratio}: B's share must be between 0 and 1")
    args.face = _listed(args.face, "--face", int)
    if len(args.face) > 2:
        raise FaceStudioError(f"{len(args.face)} --face values for 2 people: give one for both, or one for A "
                              "and one for B")
    args = argparse.Namespace(**{**vars(args), "identity": [args.person_a, args.person_b], "region": [],
                                 "strength": [args.strength], "style": None, "style_strength": 1.0,
                                 "style_adapter": None, "scene": None, "scene_faces": None,
                                 "regions": None})
    return _run_generation(args, [round(1.0 - args.ratio, 6), round(args.ratio, 6)], command="mix")


def _run_generation(args, mix: list[float] | None, command: str) -> int:
    """Check everything, encode the faces, then load the models and write the images one by one."""
    from ..imaging import load_image

    preset = _preset_defaults(args)

    # 1. Settings, then files: everything a user can get wrong fails here, before any model loads (and
    #    before torch, diffusers or transformers is imported: a mistake costs a second, not twenty)
    settings = _check_settings(args, mix)
    people = settings.identities
    output = _check_output_folder(args.output)
    _check_room(args, output, settings.width, settings.height)
    for person in people:
        for photo in person.photos:
            load_image(photo, min_side=MIN_IMAGE_SIDE, name=photo)
    style = None if args.style is None else load_image(args.style, name=args.style)
    scene = None if args.scene is None else load_image(args.scene, min_side=MIN_IMAGE_SIDE, name=args.scene)
    if preset is not None:  # its faces are encoded after loading; found now. Its files fetched now if agreed.
        from ..presets import ensure_available

        _find_faces(people)
        ensure_available(preset, download=args.download, accepted=set(args.accept_license),
                         base_model=args.base_model, with_style=style is not None, arcface_model=args.arcface_model,
                         speed=args.speed or "none", speed_weights=args.speed_weights, local_files=local_files_of(args),
                         tiny_decoder=args.decoder == "tiny" and args.tiny_decoder is None)
    quiet_libraries(args.debug)
    if args.device is not None:
        from ..models import choose_device

        choose_device(args.device)  # an unavailable device fails now, not after the faces are encoded
    if args.speed is not None and preset is None:
        from ..presets import check_speed_available

        check_speed_available(args.speed, args.speed_weights)
    adapter = _identity_adapter(args) if people and preset is None else None
    style_adapter = _style_adapter(args) if preset is None else None

    # 2. Faces -> identities (no face, or several without --face, stops here); a preset's after loading
    analyzer = None
    identities = []
    if preset is None and people:
        from ..faces import FaceAnalyzer
        from ..guidance import identity as idg

        analyzer = FaceAnalyzer()
        if adapter is not None:
            adapter[1].check_recognizer(analyzer.recognizer.name, str(adapter[0]))
        identities = [idg.encode_person(analyzer, person.photos, person.face, name=person.name) for person in people]

    # 3. Models
    pipe = _load_models(args, people, adapter, style_adapter, analyzer, with_style=style is not None)
    if preset is not None:
        identities = pipe.encode_identities(list(people), None)

    # 4. Images, each written as soon as it is made (metadata: labels.schema)
    sources = {"identity": str(preset.adapter) if preset else args.adapter} if people else {}
    if style_adapter:
        sources["style"] = str(style_adapter[0])
    metadata = {
        **settings.metadata(), "command": command,
        "preset": args.preset, "base_model": str(args.base_model or preset.base_model),
        **({"pulid_mode": args.pulid_mode or "fidelity"} if preset is not None and preset.projection == "pulid" else {}),
        "adapters": [{**a, "source": sources.get(a["kind"])} for a in pipe.adapter_metadata()
                     if a["kind"] in sources],
        "identities": [{"name": p.name, "photos": [Path(f).name for f in p.photos], "face": p.face,
                        "region": None if p.region is None else list(p.region), "strength": p.strength}
                       for p in people],
        "style_image": None if args.style is None else Path(args.style).name,
        "scene_image": None if args.scene is None else Path(args.scene).name,
        "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."), "facestudio_version": __version__,
    }
    inputs = tuple(IdentityInput(identity=identity, region=person.region, strength=person.strength, name=person.name)
                   for person, identity in zip(people, identities))
    settings = replace(settings, identities=inputs, style_image=style, scene_image=scene)
    with removed_if_left_empty(output):
        written = _write_images(pipe, settings, metadata, output)
    for path in written:
        print(path)
    return EXIT_OK


def add_local_file_options(group) -> None:
    """An option for each of the presets' files outside the model hub (`presets.LocalFile`)."""
    for f in LOCAL_FILES:
        group.add_argument(f.option, dest=f"{f.key}_model", metavar="FILE",
                           help=f"{f.what}, for the presets that read it (default: ${f.env}, else {f.default})")


def local_files_of(args) -> dict:
    """The model files the command line names, by `presets.LocalFile` key."""
    return {f.key: getattr(args, f"{f.key}_model") for f in LOCAL_FILES if getattr(args, f"{f.key}_model")}


def add_download_options(group) -> None:
    """`--download` / `--no-download` and `--accept-license`: first-use downloading of a preset's files."""
    from ..downloads import INSIGHTFACE_LICENSE

    group.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                       help="fetch the preset's missing model files first (default: ask on a terminal, else stop "
                            "with the `facestudio download` command to run)")
    group.add_argument("--accept-license", action="append", default=[], metavar=INSIGHTFACE_LICENSE,
                       choices=[INSIGHTFACE_LICENSE],
                       help="accept insightface's non-commercial licence, for fetching its face models")


def _preset_defaults(args):
    """The preset (or None), and the settings the user left out taken from it (else the general defaults)."""
    preset = None
    if args.preset is not None:
        from ..presets import get_preset

        preset = get_preset(args.preset)
    if args.speed is None and preset is not None:
        args.speed = preset.speed or None
    if args.negative_prompt is None and preset is not None:
        args.negative_prompt = preset.negative_prompt
    args.negative_prompt = args.negative_prompt or None  # '' asks for none
    args.speed = None if args.speed in (None, "", "none") else args.speed
    speed = None if args.speed is None else get_speed_model(args.speed, "--speed")
    if speed is not None and preset is not None and speed.sdxl != preset.sdxl:
        raise FaceStudioError(f"--speed {speed.name} is made for {'SDXL' if speed.sdxl else 'SD 1.5'}; preset "
                              f"{preset.name} is {'SDXL' if preset.sdxl else 'SD 1.5'}")
    if args.speed_weights is not None and speed is None:
        raise FaceStudioError("--speed-weights needs --speed NAME (which speed model the file is)")
    # what the user gave wins, then the speed model's settings, then the preset's, then the defaults
    args.scheduler = args.scheduler or (speed.scheduler if speed else preset.scheduler if preset else
                                        DEFAULT_SCHEDULER)
    args.steps = args.steps if args.steps is not None else speed.steps if speed else \
        preset.steps if preset else DEFAULT_STEPS
    if args.text_scale is None:
        args.text_scale = speed.guidance_scale if speed else preset.text_guidance_scale if preset else \
            DEFAULT_TEXT_SCALE
        if args.reference_scale is None and (preset is not None or speed is not None):
            args.reference_scale = speed.guidance_scale if speed else preset.reference_guidance_scale
    if args.distilled_guidance is None and preset is not None:
        args.distilled_guidance = preset.distilled_guidance_scale
    if args.start_step is None:
        args.start_step = preset.start_step if preset else 0
    return preset


def _find_faces(people) -> None:
    """Each photo shows the face to use (no face, or several without --face, stops here)."""
    import numpy as np

    from ..faces.analysis import select_face
    from ..faces.detection import YuNetDetector
    from ..imaging import load_image

    detector = YuNetDetector()
    for person in people:
        for photo in person.photos:
            image = np.asarray(load_image(photo, min_side=MIN_IMAGE_SIDE, name=photo))
            select_face(detector.detect(image), index=person.face, source=photo)


def _check_settings(args, mix) -> GenerationSettings:
    """Every check that needs no file: how the options combine, then the settings' own checks (named as
    options). The people carry their photo paths until their faces are encoded."""
    specs = [_photo_list(spec, i) for i, spec in enumerate(args.identity)]
    count = len(specs)
    if mix is not None and all(math.isfinite(w) and w >= 0 for w in mix) and abs(sum(mix) - 1.0) <= 1e-3:
        mix = [w / sum(mix) for w in mix]  # typed weights such as thirds, made exact
    faces = _per_person(_listed(args.face, "--face", int), count, "--face")
    strengths = _per_person(_listed(args.strength, "--strength", float), count, "--strength", default=1.0)
    slots = 1 if mix is not None else count
    if len(args.region) > slots:
        raise FaceStudioError(f"{len(args.region)} --region boxes for {slots} {'mixed face' if mix else 'identity'}"
                              f"{'' if slots == 1 else 's'}: at most one --region per --identity"
                              + (" (one in all with --mix)" if mix else ""))
    side = _default_side(args)
    regions = [as_region(text, "cli").check(args.width or side, args.height or side, "cli") for text in args.region]
    regions += [None] * (count - len(regions))
    if args.base_model is None and args.preset is None:
        raise FaceStudioError("give --base-model (a folder, a hub id or 'tiny') or --preset")
    if getattr(args, "pulid_mode", None) and not (args.preset and PRESETS[args.preset].projection == "pulid"):
        raise FaceStudioError("--pulid-mode is for the PuLID presets: "
                              + ", ".join(p.name for p in PRESETS.values() if p.projection == "pulid"))
    refuse_flux_options(args)
    flux = args.preset is not None and PRESETS[args.preset].flux
    for option, given in (("--sequential-offload", args.sequential_offload), ("--quantize", args.quantize),
                          ("--distilled-guidance", args.distilled_guidance is not None),
                          ("--start-step", bool(args.start_step))):
        if given and not flux:
            raise FaceStudioError(f"{option} is for the FLUX presets (pulid-flux-dev, pulid-flux-schnell)")
    for option, side in (("--width", args.width), ("--height", args.height)):
        if flux and side is not None and side % 16:
            raise FaceStudioError(f"{option} {side}: FLUX needs a multiple of 16")
    if args.preset is not None and (args.adapter or getattr(args, "style_adapter", None)):
        raise FaceStudioError(f"--preset {args.preset} brings its own adapters: drop --adapter / --style-adapter")
    if args.style is not None and not (args.style_adapter or style_beside(args.adapter) or args.preset):
        raise FaceStudioError("--style needs a style adapter: --style-adapter FOLDER (or 'tiny' for a smoke test)")
    if count and not (args.adapter or args.preset):
        raise FaceStudioError("--identity needs an identity adapter: --adapter FOLDER (or 'tiny' for a smoke "
                              "test with an untrained adapter)")
    people = tuple(IdentityInput(photos=tuple(p), region=r, strength=s, face=f, name="+".join(Path(x).stem for x in p))
                   for p, f, r, s in zip(specs, faces, regions, strengths))
    scene_faces = None if args.scene_faces is None else _numbers(args.scene_faces, "--scene-faces", int)
    return GenerationSettings(
        args.prompt, args.negative_prompt, people, mix, style_image=args.style, style_strength=args.style_strength,
        scene_image=args.scene, scene_faces=scene_faces, regions=args.regions, text_guidance_scale=args.text_scale,
        reference_guidance_scale=args.reference_scale, num_inference_steps=args.steps, width=args.width,
        height=args.height, seed=args.seed, count=args.num_images,
        scheduler=args.scheduler, speed=args.speed or "",
        reference_guidance_start=args.reference_start, distilled_guidance_scale=args.distilled_guidance,
        start_step=args.start_step, shortcut_scale=args.shortcut_scale, decoder=args.decoder).validate("cli")


def refuse_flux_options(args) -> None:
    """With a FLUX preset, what FLUX does not take (generate's and serve's options), refused before any file is
    fetched or model loaded (FLUX.1 is 12 B parameters: finding out after loading costs minutes)."""
    if args.preset is None or not PRESETS[args.preset].flux:
        return
    tiny = "the tiny decoder (TAESD) decodes SD 1.5 and SDXL latents; FLUX decodes with its own VAE"
    for option, given, why in (
            ("--decoder tiny", getattr(args, "decoder", "full") == "tiny", tiny),
            ("--tiny-decoder", getattr(args, "tiny_decoder", None) is not None, tiny),
            ("--previews", getattr(args, "previews", False), tiny + " (previews need it)"),
            ("--speed", getattr(args, "speed", None) not in (None, "none"),
             "the speed models are for SD 1.5 and SDXL; pulid-flux-schnell is FLUX's few-step preset"),
            ("--style", getattr(args, "style", None) is not None, "PuLID-FLUX has no style adapter"),
            ("--reference-start", getattr(args, "reference_start", None) is not None,
             "PuLID-FLUX's --start-step delays the identities instead")):
        if given:
            raise FaceStudioError(f"{option} is not for the FLUX presets: {why}")
    if args.cpu_offload and getattr(args, "sequential_offload", False):
        raise FaceStudioError("choose one of --cpu-offload and --sequential-offload")


def _default_side(args) -> int:
    preset = PRESETS.get(args.preset) if args.preset else None
    return SDXL_DEFAULT_SIDE if preset and (preset.sdxl or preset.flux) else DEFAULT_SIDE


def _photo_list(spec: str, index: int) -> list[str]:
    photos = [p.strip() for p in spec.split(",") if p.strip()]
    if not photos:
        raise FaceStudioError(f"--identity {index + 1} is empty: give a photo, or several separated by commas")
    return photos


def _numbers(text: str, option: str, kind):
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise FaceStudioError(f"{option} {text!r}: expected comma-separated {'integers' if kind is int else 'numbers'}"
                              ) from None


def _listed(values: list, option: str, kind) -> list:
    """Per-person values given as comma lists, repeated options, or both (`--strength 1,0.8` is
    `--strength 1 --strength 0.8`), in order; numbers already parsed (from `mix`) pass through."""
    return [v for value in values for v in ([value] if isinstance(value, (int, float)) else
                                             _numbers(value, option, kind))]


def _per_person(values: list, count: int, option: str, default=None) -> list:
    """Option values given once per identity, once for all, or not at all."""
    if not values:
        return [default] * count
    if not count:
        raise FaceStudioError(f"{option} given without --identity")
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise FaceStudioError(f"{len(values)} {option} values for {count} --identity: give one per --identity, "
                              "in order, or one for all")
    return list(values)


def _check_output_folder(folder: str) -> Path:
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise FaceStudioError(f"--output {folder}: is a file; give a folder")
    existing = existing_ancestor(path)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise FaceStudioError(f"--output {folder}: {existing} is not writable")
    return path


def _check_room(args, output: Path, width: int | None, height: int | None) -> None:
    """The images and the contact sheet fit on --output's file system (at their largest), before models load.
    Without --width/--height the side is the default one, which also bounds a --scene's size."""
    from ..imaging import contact_sheet_size

    side = _default_side(args)
    width, height, count = width or side, height or side, args.num_images
    needed = count * png_bytes_bound(width, height)
    if count > 1:
        needed += png_bytes_bound(*contact_sheet_size(count, width, height))
    check_free_space(output, needed, f"{count} image{'s' if count > 1 else ''} of {width}x{height}"
                                     + (" and their contact sheet" if count > 1 else ""))


def _identity_adapter(args):
    """`(folder, config)` of --adapter, or `None` for 'tiny' (made once the UNet is loaded)."""
    from ..guidance.identity import IdentityAdapterConfig
    from ..guidance.layout import read_config

    if args.adapter == "tiny":
        return None
    folder = adapter_folder(args.adapter, "identity", "--adapter")
    return folder, IdentityAdapterConfig.from_dict(read_config(folder), source=str(folder))


def _style_adapter(args):
    """`(folder or 'tiny', config or None)` of the style adapter when --style is given, else None."""
    from ..guidance.layout import read_config
    from ..guidance.style import StyleAdapterConfig

    if args.style is None:
        if args.style_adapter:
            logger.info("--style-adapter is not used without --style")
        return None
    if args.style_adapter == "tiny":
        return "tiny", None
    folder = adapter_folder(args.style_adapter, "style", "--style-adapter") if args.style_adapter \
        else style_beside(args.adapter)
    return folder, StyleAdapterConfig.from_dict(read_config(folder), source=str(folder))


def _load_models(args, people, adapter, style_adapter, analyzer, with_style: bool):
    """The base pipeline with the adapters the run needs ('tiny' ones made for the loaded UNet)."""
    if args.adapter and not people:
        logger.info("--adapter is not used without --identity")
    if args.preset is not None:
        from ..presets import load_preset_pipeline

        memory = {"sequential_offload": args.sequential_offload, "quantize": args.quantize} \
            if PRESETS[args.preset].flux else {}
        pipe = load_preset_pipeline(args.preset, base_model=args.base_model, device=args.device,
                                    cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling, with_style=with_style,
                                    arcface_model=args.arcface_model, speed=args.speed or "none",
                                    speed_weights=args.speed_weights, pulid_mode=args.pulid_mode,
                                    local_files=local_files_of(args), pulid_sizes=args.pulid_sizes, **memory)
    else:
        pipe = load_generation_pipeline(
            args.base_model, adapter=(adapter[0] if adapter else TINY) if people else None,
            style_adapter=style_adapter[0] if style_adapter else None, device=args.device,
            cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling, face_analyzer=analyzer, with_style=with_style,
            speed=args.speed, speed_weights=args.speed_weights)
    if args.decoder == "tiny":
        from ..decoding import load_tiny_decoder
        from ..models import tiny_autoencoder

        # the random test model gets a random tiny decoder of its own shape; real models TAESD
        load_tiny_decoder(pipe, tiny_autoencoder() if args.base_model == TINY and not args.tiny_decoder
                          else args.tiny_decoder)
    pipe.set_progress_bar_config(disable=True)  # the command shows one bar over all images
    return pipe


def _write_images(pipe, settings: GenerationSettings, metadata: dict, output: Path) -> list[Path]:
    """Generate image i with seed `settings.seed + i` and write it at once; a contact sheet after several."""
    from tqdm import tqdm

    from ..imaging import ai_generated_metadata, contact_sheet

    written, images, seeds = [], [], []
    index = _next_free_index(output)
    count = settings.count
    bar = tqdm(total=count * settings.num_inference_steps, desc=f"image 1/{count}", unit="step", file=sys.stderr,
               disable=None, dynamic_ncols=True)
    try:
        for i in range(count):
            bar.set_description(f"image {i + 1}/{count}")
            seed = settings.seed + i
            result = pipe(replace(settings, seed=seed), on_step=lambda step, total: bar.update(1))
            image = result.images[0]
            sampler = {"scheduler": result.settings.get("scheduler", metadata["scheduler"]),  # FLUX: its own
                       "scheduler_class": result.settings.get("scheduler_class")}
            image_metadata = ai_generated_metadata({**result.metadata, **metadata, "seed": seed, "width": image.width,
                                                    "height": image.height, **sampler})
            path, index = _save_numbered(image, output, index, seed, image_metadata)
            index += 1
            written.append(path)
            images.append(image)
            seeds.append(seed)
        bar.close()
        if count > 1:
            sheet = contact_sheet(images, labels=[f"seed {s}" for s in seeds])
            first, last = (_IMAGE_NAME.match(p.name).group(1) for p in (written[0], written[-1]))
            names = ["contact-sheet.png", f"contact-sheet-{first}-{last}.png"]
            names += (f"contact-sheet-{first}-{last}-{k}.png" for k in range(2, 1000))
            sheet_meta = ai_generated_metadata({**metadata, "contact_sheet_of": [p.name for p in written],
                                                "seeds": seeds})
            written.append(next(output / n for n in names if _save_if_free(sheet, output / n, sheet_meta)))
    except BaseException:
        bar.close()
        if written:
            print(f"facestudio: {len(written)} of {count} images were written before the stop:", file=sys.stderr)
            for path in written:
                print(f"  {path}", file=sys.stderr)
        raise
    return written


def _next_free_index(folder: Path) -> int:
    """One more than the highest `NNN` of the `NNN-seedS.png` files already in `folder`."""
    if not folder.is_dir():
        return 0
    used = [int(m.group(1)) for p in folder.iterdir() if (m := _IMAGE_NAME.match(p.name))]
    return max(used, default=-1) + 1


def _save_numbered(image, folder: Path, index: int, seed: int, metadata: dict) -> tuple[Path, int]:
    """Write `folder/{index:03d}-seed{seed}.png` at the first index from `index` whose number is free."""
    while True:
        taken = folder.is_dir() and any(folder.glob(f"{index:03d}-seed*.png"))
        path = folder / f"{index:03d}-seed{seed}.png"
        if not taken and _save_if_free(image, path, metadata):
            return path, index
        index += 1


def _save_if_free(image, path: Path, metadata: dict) -> bool:
    """`save_png` (atomic), never over an existing file: False when `path` is taken."""
    from ..imaging import save_png

    try:
        save_png(image, path, metadata, overwrite=False)
    except FileExistsError:
        return False
    return True
