"""An A1111 txt2img request -> the job of a synchronous call (`generation.InlinePlan`), and what was honoured.

Field by field (README's mapping table says the same):

    prompt, negative_prompt        the prompts ("" negative: none)
    seed                           seed of the first image (-1: random); image i uses seed + i, as A1111
    batch_size * n_iter            how many images (made one by one, each with its own seed)
    steps, cfg_scale               denoising steps (default: the server's), the text guidance scale
    width, height                  the output size (default: the model's side, 512 for SD 1.5)
    sampler_name (sampler_index), scheduler   a facestudio sampler (`names.sampler_for`)
    alwayson_scripts.controlnet.args[]        IP-Adapter units: FaceID / Plus-Face models -> one identity each
                                   (image: its photos; weight: its strength; effective_region_mask: its region),
                                   a plain IP-Adapter model -> the style image (weight: style strength)
    facestudio                     facestudio's extras (`schemas.FaceStudioExtras`)

Everything else is accepted and, where it would change A1111's result, listed as ignored in the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import FaceStudioError
from ...request import GenerationSettings, IdentityInput
from ..generation import InlinePlan, checked, defaults_of
from ..uploads import UploadLimits, decode_upload
from .names import sampler_for
from .schemas import FaceStudioExtras, Txt2ImgRequest
from .units import decode_base64, parse_units

#: The request fields facestudio reads.
HONOURED = ("prompt", "negative_prompt", "seed", "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter",
            "steps", "cfg_scale", "width", "height", "send_images", "alwayson_scripts", "facestudio")
#: A1111 fields that change its result when set, with the values that do not (hires fix, face restoration,
#: tiling, variation seeds, styles, settings overrides, selectable scripts, the refiner, sampler parameters).
_INERT = {"enable_hr": (False, None), "restore_faces": (False, None), "tiling": (False, None), "styles": ([], None),
          "subseed_strength": (0, None), "seed_resize_from_h": (-1, 0, None), "seed_resize_from_w": (-1, 0, None),
          "override_settings": ({}, None), "script_name": (None, ""), "script_args": ([], None),
          "refiner_checkpoint": (None, ""), "firstpass_image": (None, ""), "infotext": (None, ""),
          "s_min_uncond": (0, None), "s_churn": (0, None), "s_tmax": (0, None), "s_tmin": (0, None),
          "s_noise": (1, None), "eta": (None, 1)}
#: A1111 fields without effect unless one above is set (hires fix, variation seeds, the refiner, bookkeeping).
_FOLLOWERS = ("denoising_strength", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
              "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
              "hr_scheduler", "hr_prompt", "hr_negative_prompt", "subseed", "refiner_switch_at",
              "override_settings_restore_afterwards", "do_not_save_samples", "do_not_save_grid", "comments",
              "disable_extra_networks", "force_task_id", "sampler_index")


@dataclass
class Report:
    """What the answer's `info.facestudio` says about the request."""

    sampler: str = ""
    honoured: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"sampler": self.sampler, "honoured": self.honoured, "ignored": self.ignored,
                "unknown": self.unknown, "notes": self.notes, "units": self.units}


def plan_txt2img(pipe, request: Txt2ImgRequest, limits: UploadLimits, *, max_side: int, max_count: int,
                 default_steps: int) -> tuple[InlinePlan, Report]:
    """Check and resolve a request (in an upload-pool thread: it decodes and encodes photos); raises
    `FaceStudioError` (or `UploadError`) naming the field."""
    report = _fields_report(request)
    extras = request.facestudio or FaceStudioExtras()
    units, report.notes = parse_units(request)
    people_units = [u for u in units if u.role == "identity"]
    style_units = [u for u in units if u.role == "style"]
    roles = {a.kind for a in getattr(pipe, "facestudio_adapters", ())}
    for unit in units:
        if unit.role not in roles:
            raise FaceStudioError(f"{unit.field}.model {unit.model!r}: an IP-Adapter {unit.role} unit, but this "
                                  f"server has no {unit.role} adapter loaded")
    if len(people_units) > 4:
        raise FaceStudioError(f"alwayson_scripts.controlnet.args: {len(people_units)} identity units; at most 4")
    if len(style_units) > 1:
        raise FaceStudioError(f"{style_units[1].field}: one style unit per request (a second one given)")
    for name in ("names", "faces"):
        given = getattr(extras, name)
        if given is not None and len(given) != len(people_units):
            raise FaceStudioError(f"facestudio.{name}: {len(given)} entries for {len(people_units)} identity units")
    defaults = defaults_of(pipe)  # what the loaded speed model and preset give a request that leaves them out
    report.sampler = sampler_for(request.sampler_name or request.sampler_index, request.scheduler) \
        if request.sampler_name or request.sampler_index else defaults["scheduler"]

    # The images: the scene (its size decides the output's when none is given), masks at the output size, the style
    scene = scene_size = None
    if extras.scene_image is not None:
        scene = decode_upload(decode_base64(extras.scene_image, "facestudio.scene_image"), "facestudio.scene_image",
                              limits, min_side=32).image
        scene_size = (*scene.size, len(pipe.get_face_analyzer().detect(np.asarray(scene))))
    width, height = GenerationSettings("", width=request.width, height=request.height).output_size(
        pipe.default_side, None if scene_size is None else scene_size[:2])
    regions = [u.region_mask(limits, width, height) for u in people_units]
    style = style_units[0].style_image(limits) if style_units else None

    # The people: each identity unit's photos encoded as the loaded identity adapter reads them
    people, infos = [], []
    for k, unit in enumerate(people_units):
        name = extras.names[k] if extras.names and extras.names[k].strip() else f"ControlNet {unit.index}"
        face = extras.faces[k] if extras.faces else None
        identity, photos = unit.identity(pipe, limits, face, name)
        people.append(IdentityInput(identity=identity, region=regions[k], strength=unit.weight, name=name))
        infos.append({"name": name, "photos": photos, "metadata": _unit_metadata(unit, regions[k], width, height)})
    for unit in units:
        report.ignored.extend(unit.ignored)
        if unit.role == "style" and unit.region is not None:  # a style image acts on the whole image
            report.ignored.append(unit.region[0])
        report.units.append({"field": unit.field, "role": unit.role, "module": unit.module, "model": unit.model,
                             "weight": unit.weight, "photos": len(unit.photos),
                             "region": None if unit.region is None else unit.region[0]})

    negative = request.negative_prompt or defaults["negative_prompt"] or None  # A1111's "" is none
    settings = GenerationSettings(
        request.prompt, negative, tuple(people), extras.mix, style_image=style,
        style_strength=style_units[0].weight if style_units else 1.0, scene_image=scene,
        scene_faces=extras.scene_faces, regions=extras.regions, text_guidance_scale=request.cfg_scale,
        reference_guidance_scale=extras.reference_scale,
        num_inference_steps=request.steps or default_steps,
        width=request.width, height=request.height, seed=None if request.seed == -1 else request.seed,
        count=request.batch_size * request.n_iter, scheduler=report.sampler, speed=defaults["speed"])
    settings = checked(pipe, settings, "a1111", max_side=max_side, max_count=max_count, scene=scene_size)
    names = (("style_image", None if not style_units else f"{style_units[0].field}.image"),
             ("scene_image", None if scene is None else "facestudio.scene_image"))
    return InlinePlan(request, settings, tuple(infos), names), report


def _unit_metadata(unit, region, width: int, height: int) -> dict:
    """What an identity's metadata says of its unit: the unit, and its region mask's field, box and area."""
    recorded = {"unit": unit.field, "model": unit.model}
    if region is not None:
        mask = region.mask(width, height) > 0.5
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
        recorded["region_mask"] = {"field": unit.region[0], "box": box, "area": round(float(mask.mean()), 4)}
    return recorded


def _fields_report(request: Txt2ImgRequest) -> Report:
    given = request.model_fields_set | set(request.model_extra or {})
    report = Report(honoured=sorted(given & set(HONOURED)))
    for name, value in (request.model_extra or {}).items():
        if name in _INERT:
            if value not in _INERT[name]:
                report.ignored.append(name)
        elif name not in _FOLLOWERS:
            report.unknown.append(name)
    if request.save_images:
        report.ignored.append("save_images")
    return report
