"""A1111's names for what facestudio serves: samplers and schedule types, ControlNet IP-Adapter modules and models.

A1111 names a sampler ("Euler a", "DPM++ 2M") and a schedule type ("Automatic", "Karras") apart; facestudio's
samplers (`sampling.schedulers`) carry both in one name. `labels.parameters.SAMPLERS` is the one table between
them; this module reads it backwards. The sd-webui-controlnet extension names an IP-Adapter unit by its
preprocessor (`module`) and its checkpoint (`model`, often with a hash: "ip-adapter-faceid-plusv2_sd15 [6e14fc1a]");
`unit_role` says what such a unit is to facestudio: an identity (the FaceID and Plus-Face families) or a style
image (plain IP-Adapter), served by the identity or style adapter this server loaded.
"""

from __future__ import annotations

import re

from ...errors import FaceStudioError
from ...labels.parameters import SAMPLERS
from ...sampling.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

#: A1111's other names for its samplers (its `aliases`), beside facestudio's own names.
_ALIASES = {"Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"], "DPM++ 2M": ["k_dpmpp_2m"],
            "LCM": ["k_lcm"]}


def samplers() -> list[dict]:
    """`GET /sdapi/v1/samplers`: one entry per facestudio sampler, under its A1111 name."""
    listed = []
    for name in SCHEDULERS:
        a1111, schedule = SAMPLERS[name]
        aliases = [*_ALIASES.get(a1111, []), name] + ([f"{a1111} {schedule}"] if schedule != "Automatic" else [])
        listed.append({"name": a1111, "aliases": aliases,
                       "options": {} if schedule == "Automatic" else {"scheduler": schedule.lower()}})
    return listed


def schedulers() -> list[dict]:
    """`GET /sdapi/v1/schedulers`: the schedule types some facestudio sampler runs."""
    kinds = sorted({schedule for name in SCHEDULERS for schedule in [SAMPLERS[name][1]]},
                   key=lambda s: s != "Automatic")
    return [{"name": kind.lower(), "label": kind, "aliases": None, "default_rho": 7.0 if kind == "Karras" else -1,
             "need_inner_model": False} for kind in kinds]


def sampler_for(sampler_name: str | None, scheduler: str | None) -> str:
    """facestudio's sampler for A1111's sampler name and schedule type (None or "": the defaults), or a
    `FaceStudioError` naming the field. "Automatic" is each sampler's own schedule, as in A1111 (Karras for
    DPM++ 2M); an old combined name ("DPM++ 2M Karras") names both."""
    if not sampler_name:
        return DEFAULT_SCHEDULER
    wanted = sampler_name.strip().lower()
    for name in SCHEDULERS:
        a1111, schedule = SAMPLERS[name]
        entry = next(s for s in samplers() if s["name"] == a1111)
        if wanted in (a1111.lower(), *(a.lower() for a in entry["aliases"])):
            given = (scheduler or "automatic").strip().lower()
            if given not in ("automatic", schedule.lower()):
                raise FaceStudioError(f"scheduler {scheduler!r}: facestudio runs {a1111} with its "
                                      f"{schedule.lower()} schedule only (give 'automatic')")
            return name
    known = ", ".join(repr(s["name"]) for s in samplers())
    raise FaceStudioError(f"sampler_name {sampler_name!r}: not a sampler of this server; use one of {known} "
                          "(GET /sdapi/v1/samplers)")


# ---------------------------------------------------------------------------------------------- ControlNet units

#: The extension's IP-Adapter preprocessors, by name and by label: face analysis (InsightFace), CLIP image
#: features, or chosen from the model (ip-adapter-auto).
FACE_MODULES = ("ip-adapter_face_id", "ip-adapter_face_id_plus")
CLIP_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_sdxl", "ip-adapter_clip_g",
                "ip-adapter_clip_sdxl_plus_vith")
AUTO_MODULE = "ip-adapter-auto"
MODULES = (AUTO_MODULE, *FACE_MODULES, *CLIP_MODULES)
#: The A1111 model name of each identity kind facestudio loads (`guidance.kinds`), `{base}` sd15 or sdxl.
KIND_MODELS = {"faceid": "ip-adapter-faceid_{base}", "faceid-plus": "ip-adapter-faceid-plus_{base}",
               "faceid-plusv2": "ip-adapter-faceid-plusv2_{base}",
               "faceid-portrait": "ip-adapter-faceid-portrait_{base}",
               "plus-face": "ip-adapter-plus-face_{base}", "full-face": "ip-adapter-full-face_{base}",
               "facestudio": "facestudio-identity_{base}", "ip-adapter": "ip-adapter_{base}"}
#: Model names of the face families (identity units); other IP-Adapter models are style images.
_FACE_MODEL = re.compile(r"faceid|plus-face|full-face|facestudio")
_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]\s*$")


def model_stem(model: str) -> str:
    """A model name without the extension's hash ("[6e14fc1a]") and a file suffix, lower-case."""
    stem = _HASH.sub("", model).strip().lower()
    return re.sub(r"\.(safetensors|bin|pth|pt|ckpt)$", "", stem)


def unit_role(module: str, model: str, field: str) -> str:
    """`"identity"` or `"style"` for a unit's module and model, or a `FaceStudioError` naming `field`'s
    `module` or `model` when facestudio cannot serve it."""
    if module not in MODULES:
        raise FaceStudioError(f"{field}.module {module[:80]!r}: not an IP-Adapter preprocessor; facestudio serves "
                              f"IP-Adapter units only: {', '.join(MODULES)} (GET /controlnet/module_list)")
    stem = model_stem(model)
    if not stem.startswith(("ip-adapter", "ip_adapter", "facestudio")) or "pulid" in stem or "instantid" in stem:
        raise FaceStudioError(f"{field}.model {model[:80]!r}: not an IP-Adapter FaceID, Plus-Face or IP-Adapter "
                              "model this server serves (GET /controlnet/model_list)")
    role = "identity" if _FACE_MODEL.search(stem) else "style"
    if module in FACE_MODULES and "faceid" not in stem:
        raise FaceStudioError(f"{field}.module {module!r} reads faces for a FaceID model, but model {model[:80]!r} "
                              f"is not one: use {CLIP_MODULES[1]!r} or {AUTO_MODULE!r}")
    if module in CLIP_MODULES and "faceid" in stem:
        raise FaceStudioError(f"{field}.module {module!r} gives CLIP features, but model {model[:80]!r} is a FaceID "
                              f"model: use {FACE_MODULES[1]!r} or {AUTO_MODULE!r}")
    return role


def served_models(pipe) -> list[str]:
    """The A1111 model names of the adapters `pipe` has loaded (`GET /controlnet/model_list`)."""
    from ...request import SDXL_DEFAULT_SIDE

    base = "sdxl" if pipe.default_side == SDXL_DEFAULT_SIDE else "sd15"
    return [KIND_MODELS.get(a.adapter_kind.name, a.adapter_kind.name + "_{base}").format(base=base)
            for a in getattr(pipe, "facestudio_adapters", ())]
