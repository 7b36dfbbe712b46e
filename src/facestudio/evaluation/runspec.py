"""Run specs: identities x prompts x seeds x settings, generated, written with metadata, then scored.

A spec is a TOML or JSON file (paths relative to it):

```toml
base_model = "tiny"          # a diffusers folder, a hub id, or "tiny"
adapter = "tiny"             # identity adapter folder, or "tiny"
# preset = "faceid-plusv2-sd15"   # instead of adapter: public weights by name (base_model then optional)
# arcface_model = "w600k_r50.onnx"  # the FaceID presets' ArcFace file
steps = 25
# speed = "hyper-sd15-4step"   # a few-step speed LoRA: its sampler, steps and guidance become the defaults
# speed_weights = "Hyper-SD15-4steps-lora.safetensors"   # its local file instead of the model hub's
# scheduler = "dpmpp-2m-karras"   # the sampler (default euler-a, or the speed model's)
width = 512
height = 512
seeds = [0, 1, 2, 3]
prompts = ["a portrait photo of a person", "a person as an astronaut, oil painting"]
baselines = ["no identity", "paste"]     # the default; [] for none
tuning_baselines = true                  # time DreamBooth-LoRA and Textual Inversion steps on this base
clip_model = "openai/clip-vit-base-patch32"   # optional; a folder or hub id

[[settings]]                 # one per guidance setting; default one at text 7.5 / reference 7.5
text_scale = 7.5
reference_scale = 3.0

[identities.alice]
photos = ["alice1.jpg", "alice2.jpg"]
held_out = ["alice3.jpg"]    # photos of the same person the generator never sees

[[groups]]                   # people drawn together; default: each identity alone
identities = ["alice", "bob"]
```
"""

from __future__ import annotations

import json
import logging
import math
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import FaceStudioError
from ..faces.analysis import select_face
from ..imaging import ai_generated_metadata, load_image, save_png, to_array
from ..request import DEFAULT_SIDE, DEFAULT_STEPS, DEFAULT_TEXT_SCALE, GenerationSettings
from ..sampling.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from .baselines import (DREAMBOOTH_LORA, TEXTUAL_INVERSION, TuningCost, TuningRecipe, paste_reference,
                        time_dreambooth_lora, time_textual_inversion)
from .records import FACESTUDIO, ImageRecord, record_from_metadata
from .scoring import strip
from .timing import stopwatch, timed_call

logger = logging.getLogger(__name__)

NO_IDENTITY, PASTE = "no identity", "paste"
BASELINES = (NO_IDENTITY, PASTE)


@dataclass(frozen=True)
class Setting:
    text_scale: float = DEFAULT_TEXT_SCALE
    reference_scale: float = DEFAULT_TEXT_SCALE
    strength: float = 1.0


@dataclass(frozen=True)
class RunSpec:
    """A parsed, checked run spec (see the module docstring)."""

    base_model: str
    adapter: str | None
    identities: dict[str, dict]
    groups: tuple[tuple[str, ...], ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    steps: int = DEFAULT_STEPS
    width: int = DEFAULT_SIDE
    height: int = DEFAULT_SIDE
    negative_prompt: str | None = None
    baselines: tuple[str, ...] = BASELINES
    tuning_baselines: bool = False
    tuning_passes: int = 2
    clip_model: str | None = None
    device: str | None = None
    source: str = ""
    preset: str | None = None
    arcface_model: str | None = None
    speed: str | None = None
    speed_weights: str | None = None
    scheduler: str = DEFAULT_SCHEDULER

    @property
    def images(self) -> int:
        return len(self.groups) * len(self.prompts) * len(self.settings) * len(self.seeds)


def load_spec(path: str | Path) -> RunSpec:
    """Read and check a spec; every mistake is one `FaceStudioError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FaceStudioError(f"run spec {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FaceStudioError(f"run spec {path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({e})") from None
    return parse_spec(data, base=path.parent, source=str(path))


def parse_spec(data: dict, base: Path = Path("."), source: str = "run spec") -> RunSpec:
    def fail(message):
        raise FaceStudioError(f"{source}: {message}")

    def strings(value, what: str) -> list[str]:  # TOML and JSON give any type anywhere: checked before use
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            fail(f"{what} must be a list of strings, got {value!r}")
        return value

    def integer(key: str, default: int) -> int:
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            fail(f"{key} must be an integer, got {value!r}")
        return value

    if not isinstance(data, dict):
        fail(f"a table of settings expected, found {type(data).__name__}")
    for key in ("base_model", "adapter", "negative_prompt", "clip_model", "device", "preset", "arcface_model",
                "speed", "speed_weights", "scheduler"):
        if data.get(key) is not None and not isinstance(data[key], str):
            fail(f"{key} must be a string, got {data[key]!r}")
    if not isinstance(data.get("identities", {}), dict):
        fail("identities must be a table: [identities.NAME] with photos = [...]")
    known = {"base_model", "adapter", "identities", "groups", "prompts", "seeds", "settings", "steps", "width",
             "height", "negative_prompt", "baselines", "tuning_baselines", "tuning_passes", "clip_model", "device",
             "preset", "arcface_model", "speed", "speed_weights", "scheduler"}
    if unknown := sorted(set(data) - known):
        fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    preset = data.get("preset")
    if preset is not None:
        from ..presets import PRESETS

        if preset not in PRESETS:
            fail(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        if data.get("adapter"):
            fail(f"preset {preset} brings its own adapter: drop adapter")
    if "base_model" not in data and preset is None:
        fail("base_model is required (a diffusers folder, a hub id, or 'tiny'), or a preset")
    identities = {}
    for name, entry in (data.get("identities") or {}).items():
        if not isinstance(entry, dict) or not entry.get("photos"):
            fail(f"identities.{name} needs photos = [...]")
        identities[name] = {"photos": [_path(base, p) for p in strings(entry["photos"], f"identities.{name}.photos")],
                            "held_out": [_path(base, p) for p in strings(entry.get("held_out", []),
                                                                          f"identities.{name}.held_out")]}
    if not isinstance(data.get("groups", []), list):
        fail("groups must be a list of identity lists")
    groups = tuple(tuple(strings(g.get("identities") if isinstance(g, dict) else g, "a group's identities"))
                   for g in data.get("groups", [])) or tuple((n,) for n in identities)
    for group in groups:
        if unknown := [n for n in group if n not in identities]:
            fail(f"group {list(group)} names unknown identities {unknown}")
    if not groups:
        fail("no identities: add [identities.NAME] with photos = [...]")
    if data.get("identities") and not data.get("adapter") and preset is None:
        fail("identities need an identity adapter: adapter = FOLDER (or 'tiny' for a smoke test), or a preset")
    prompts = data.get("prompts") or []
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) and p for p in prompts)):
        fail("prompts must be a non-empty list of strings")
    seeds = data.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        fail("seeds must be a list of integers >= 0")
    prompts, seeds = tuple(prompts), tuple(seeds)
    speed = None
    if data.get("speed"):
        from ..sampling.speed import get_speed_model

        try:
            speed = get_speed_model(data["speed"])
        except FaceStudioError as e:
            fail(str(e))
    scheduler = data.get("scheduler") or (speed.scheduler if speed else DEFAULT_SCHEDULER)
    if scheduler not in SCHEDULERS:
        fail(f"scheduler {scheduler!r}: not a known sampler; use one of {', '.join(SCHEDULERS)}")
    default_scale = speed.guidance_scale if speed else DEFAULT_TEXT_SCALE
    settings = []
    if not isinstance(data.get("settings") or [{}], list):
        fail("settings must be a list of tables ([[settings]] in TOML)")
    for i, s in enumerate(data.get("settings") or [{}]):
        try:
            text = float(s.get("text_scale", default_scale))
            setting = Setting(text, float(s.get("reference_scale", text)), float(s.get("strength", 1.0)))
        except (TypeError, ValueError, AttributeError):
            fail(f"settings[{i}] must be a table of numbers (text_scale, reference_scale, strength)")
        if not all(math.isfinite(v) and v >= 0 for v in vars(setting).values()):
            fail(f"settings[{i}]: scales and strength must be finite numbers >= 0")
        settings.append(setting)
    baselines = tuple(strings(data["baselines"], "baselines") if "baselines" in data else BASELINES)
    if unknown := [b for b in baselines if b not in BASELINES]:
        fail(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    steps, width, height = (integer(k, d) for k, d in (("steps", speed.steps if speed else DEFAULT_STEPS),
                                                         ("width", DEFAULT_SIDE),
                                                         ("height", DEFAULT_SIDE)))
    if steps < 1 or width % 8 or height % 8 or width < 8 or height < 8:
        fail("steps must be >= 1, width and height multiples of 8")
    base_model = str(data["base_model"]) if "base_model" in data else PRESETS[preset].base_model
    return RunSpec(base_model=base_model, adapter=data.get("adapter"), identities=identities,
                   groups=groups, prompts=prompts, seeds=seeds, settings=tuple(settings), steps=steps, width=width,
                   height=height, negative_prompt=data.get("negative_prompt"), baselines=baselines,
                   tuning_baselines=bool(data.get("tuning_baselines", False)),
                   tuning_passes=integer("tuning_passes", 2), clip_model=data.get("clip_model"),
                   device=data.get("device"), source=source, preset=preset,
                   arcface_model=None if data.get("arcface_model") is None else _path(base, data["arcface_model"]),
                   speed=speed.name if speed else None, scheduler=scheduler,
                   speed_weights=None if data.get("speed_weights") is None else _path(base, data["speed_weights"]))


def _path(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


@dataclass
class RunOutput:
    """What a spec run made: the image records, what was skipped, run facts (load time, time to first image),
    and the tuning baselines' costs."""

    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    run: dict = field(default_factory=dict)
    tuning: list[dict] = field(default_factory=list)


def run_spec(spec: RunSpec, folder: Path, progress: bool = False, pipe=None) -> RunOutput:
    """Generate every image of `spec` (and its baselines) into `folder/images/<method>/`, timed.

    A group whose photos show no face is skipped with the reason; the others run. A `pipe` passed in is used
    as it is and is left without its adapters when the spec times the tuning methods (`tuning_costs`).
    """
    import torch
    from tqdm import tqdm

    from ..faces import FaceAnalyzer
    from ..pipeline import IdentityInput

    out = RunOutput()
    analyzer = FaceAnalyzer()
    if pipe is None:
        from ..loading import load_generation_pipeline

        with stopwatch() as load:
            pipe = load_generation_pipeline(spec.base_model, adapter=spec.adapter, preset=spec.preset,
                                            device=spec.device, face_analyzer=analyzer,
                                            arcface_model=spec.arcface_model, with_style=False,
                                            speed=spec.speed or "none", speed_weights=spec.speed_weights)
        out.run["model_load_seconds"] = load["seconds"]
    pipe.set_progress_bar_config(disable=True)
    # the pipeline's own analyzer: a preset's adapter reads another recogniser (ArcFace) than the default
    analyzer = getattr(pipe, "face_analyzer", None) or analyzer
    pipe.face_analyzer = analyzer
    device = pipe.device
    out.run.update(base_model=spec.base_model, adapter=spec.adapter, preset=spec.preset, device=str(device), steps=spec.steps,
                   width=spec.width, height=spec.height, images_planned=spec.images)
    # Face models load before timing (an install cost, like the base model's), so the face analysis timed
    # below is what each new person costs.
    with stopwatch() as load:
        analyzer.detect(np.zeros((64, 64, 3), np.uint8))
        size = analyzer.recognizer.input_size
        analyzer.recognizer.embed_crops(np.zeros((1, size, size, 3), np.uint8))
    out.run["face_models_load_seconds"] = load["seconds"]
    # Each person encoded once, timed (the face-analysis share of the first image that uses them).
    encoded, analysis_time = {}, {}
    for name, entry in spec.identities.items():
        if not any(name in g for g in spec.groups):
            continue
        try:
            with stopwatch() as t:
                # encoded as the loaded adapter reads identities (facestudio's own or a public kind)
                (encoded[name],) = pipe.encode_identities([IdentityInput(photos=tuple(entry["photos"]), name=name)],
                                                          None)
            analysis_time[name] = t["seconds"]
        except FaceStudioError as e:
            out.skipped.append((f"identity {name}", f"{e}; its images were not generated"))
    groups = [g for g in spec.groups if all(n in encoded for n in g)]
    # The paste baseline's reference photos, each loaded and its face found once.
    references = _paste_references(dict.fromkeys(n for g in groups for n in g), spec, analyzer, out.skipped) \
        if PASTE in spec.baselines else {}
    run_start = time.perf_counter()
    total = len(groups) * len(spec.prompts) * len(spec.settings) * len(spec.seeds)
    bar = tqdm(total=total, desc="generating", unit="image", disable=not progress or None)
    counter = 0
    for group in groups:
        first_of_group = True
        for prompt in spec.prompts:
            for setting in spec.settings:
                for seed in spec.seeds:
                    people = [IdentityInput(identity=encoded[n], strength=setting.strength, name=n) for n in group]
                    settings = GenerationSettings(
                        prompt, spec.negative_prompt, tuple(people), text_guidance_scale=setting.text_scale,
                        reference_guidance_scale=setting.reference_scale, num_inference_steps=spec.steps,
                        width=spec.width, height=spec.height, seed=seed, scheduler=spec.scheduler,
                        speed=spec.speed or "").validate()
                    output, split = timed_call(pipe, settings)
                    # Face analysis is paid once per person: charged to the first image that needs it.
                    split = {"face_analysis": sum(analysis_time[n] for n in group) if first_of_group else 0.0, **split}
                    first_of_group = False
                    if "time_to_first_image_seconds" not in out.run:
                        out.run["time_to_first_image_seconds"] = sum(split.values())
                    base = {"prompt": prompt, "seed": seed, "text_guidance_scale": setting.text_scale,
                            "reference_guidance_scale": setting.reference_scale, "steps": spec.steps,
                            "scheduler": spec.scheduler, "speed": spec.speed, "base_model": spec.base_model, "adapter": spec.adapter, "preset": spec.preset,
                            "eval_scored_as": list(group),
                            "identities": [{"name": n, "photos": [Path(p).name for p in spec.identities[n]["photos"]],
                                            "region": None, "strength": setting.strength} for n in group]}
                    stem = f"{counter:04d}-seed{seed}"
                    out.records.append(_write(output.images[0], folder / "images" / "facestudio" / f"{stem}.png",
                                              {**base, "eval_method": FACESTUDIO, "eval_timing": split}))
                    if spec.baselines:
                        plain, plain_split = timed_call(pipe, replace(settings, identities=()))
                        plain_image = plain.images[0]
                        if NO_IDENTITY in spec.baselines:
                            out.records.append(_write(plain_image, folder / "images" / "no-identity" / f"{stem}.png",
                                                      {**base, "identities": [], "eval_method": NO_IDENTITY,
                                                       "eval_timing": {"face_analysis": 0.0, **plain_split}}))
                        if PASTE in spec.baselines:
                            pasted = _paste(plain_image, group, references, analyzer)
                            if pasted is not None:
                                out.records.append(_write(pasted, folder / "images" / "paste" / f"{stem}.png",
                                                          {**base, "eval_method": PASTE}))
                    counter += 1
                    bar.update(1)
    bar.close()
    out.run["generation_seconds"] = time.perf_counter() - run_start
    if spec.tuning_baselines:
        photo = spec.identities[next(iter(spec.identities))]["photos"][0]
        out.tuning = [c.to_dict() for c in tuning_costs(pipe, photo, (spec.width, spec.height),
                                                          passes=spec.tuning_passes)]
    return out


def _write(image, path: Path, metadata: dict) -> ImageRecord:
    metadata = ai_generated_metadata({**metadata, "width": image.width, "height": image.height})
    save_png(image, path, metadata)
    return record_from_metadata(path, json.loads(json.dumps(metadata)))


def _paste_references(names, spec: RunSpec, analyzer, skipped) -> dict[str, tuple]:
    """name -> (first reference photo as an array, its face); a photo without one clear face is skipped once."""
    references = {}
    for name in names:
        try:
            reference = to_array(load_image(spec.identities[name]["photos"][0]))
            references[name] = reference, select_face(analyzer.detect(reference), source="paste baseline reference")
        except FaceStudioError as e:
            skipped.append((f"paste baseline of {name}", str(e)))
    return references


def _paste(canvas, group, references: dict, analyzer):
    """The paste baseline: each person's first reference photo onto their face (or strip) of the canvas; None
    when a person's reference has no usable face (skipped once, by `_paste_references`)."""
    from PIL import Image

    if not all(n in references for n in group):
        return None
    array = to_array(canvas)
    faces = analyzer.detect(array)
    for i, name in enumerate(group):
        region = strip(i, len(group), array.shape[1], array.shape[0]) if len(group) > 1 else None
        array = paste_reference(array, *references[name], faces, region)
    return Image.fromarray(array)


def tuning_costs(pipe, photo, size: tuple[int, int], recipes: tuple[TuningRecipe, ...] = (DREAMBOOTH_LORA,
                 TEXTUAL_INVERSION), passes: int = 2) -> list[TuningCost]:
    """`recipes` (DreamBooth-LoRA variants and Textual Inversion) timed on this pipeline's base model, training
    on `photo` resized to `size` (width, height).

    The pipeline's adapters are unloaded first (the tuning methods train the bare base model) and stay
    unloaded: a caller that passed its own pipeline reloads them if it needs them again.
    """
    import torch

    if getattr(pipe, "facestudio_adapters", ()):
        pipe.unload_adapters()
    image = load_image(photo).resize(size)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    parts = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
    return [time_textual_inversion(*parts, pixels, passes=passes) if recipe == TEXTUAL_INVERSION
            else time_dreambooth_lora(*parts, pixels, passes=passes, recipe=recipe) for recipe in recipes]
