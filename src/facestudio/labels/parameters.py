"""The A1111 "parameters" text: what Stable Diffusion web UI, Forge, ComfyUI loaders and image hosts show as
"PNG info" and paste back into their forms.

Its format (A1111's `create_infotext`): the prompt, then `Negative prompt: ...` when there is one, then one
last line of `Key: value` entries joined by ", ". A value holding a comma, colon or newline is written as a
JSON string (A1111's `quote`), so a reader splitting the line with A1111's own pattern gets every value back.
facestudio's own settings (identities, strengths, regions, mix, style, reference scale) are extra entries whose
keys start with "FaceStudio", as web UI extensions name theirs ("ADetailer model: ...").
"""

from __future__ import annotations

import json
from pathlib import PurePath

#: A1111's sampler and schedule type for each scheduler facestudio names (`sampling.schedulers`) and for the
#: diffusers class a metadata dict may record instead.
SAMPLERS = {
    "euler-a": ("Euler a", "Automatic"), "EulerAncestralDiscreteScheduler": ("Euler a", "Automatic"),
    "euler": ("Euler", "Automatic"), "EulerDiscreteScheduler": ("Euler", "Automatic"),
    "dpmpp-2m-karras": ("DPM++ 2M", "Karras"), "DPMSolverMultistepScheduler": ("DPM++ 2M", "Automatic"),
    "ddim": ("DDIM", "Automatic"), "DDIMScheduler": ("DDIM", "Automatic"),
    "unipc": ("UniPC", "Automatic"), "UniPCMultistepScheduler": ("UniPC", "Automatic"),
    "lcm": ("LCM", "Automatic"), "LCMScheduler": ("LCM", "Automatic"),
    "tcd": ("TCD", "Automatic"), "TCDScheduler": ("TCD", "Automatic"),
}


def quote(value) -> str:
    """A value as A1111 writes it: as is, or as a JSON string when it holds a comma, colon or newline."""
    text = _plain(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(metadata: dict) -> str:
    """The A1111 "parameters" text of one image from facestudio's metadata (`labels.schema`).

    Args:
        metadata (`dict`): the image's metadata: `prompt`, `negative_prompt`, `steps`, `scheduler`,
            `text_guidance_scale`, `seed`, `width`, `height`, `base_model`, `identities` (dicts with `name`,
            `strength`, `region`), `mix`, `style_strength`, ...; missing entries are left out.

    Returns:
        `str`: e.g. `"a portrait\\nNegative prompt: blurry\\nSteps: 25, Sampler: Euler a, Schedule type: Automatic,
        CFG scale: 7.5, Seed: 1, Size: 512x512, Model: stable-diffusion-v1-5, FaceStudio identities: obama, ..."`.

    Example:
        ```py
        >>> a1111_parameters({"prompt": "a portrait", "steps": 25, "scheduler": "euler-a", "seed": 1,
        ...                   "text_guidance_scale": 7, "width": 512, "height": 512})
        'a portrait\\nSteps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512'
        ```
    """
    prompt = metadata.get("prompt") or ""
    prompt = prompt if isinstance(prompt, str) else prompt[0] if prompt else ""
    negative = metadata.get("negative_prompt")
    negative = negative if isinstance(negative, str) or negative is None else negative[0] if negative else None
    sampler, schedule = SAMPLERS.get(metadata.get("scheduler"), (metadata.get("scheduler"), None))
    width, height = metadata.get("width"), metadata.get("height")
    people = [p if isinstance(p, dict) else {"name": p} for p in metadata.get("identities") or ()]
    regions = [p.get("region") for p in people]
    entries = {
        "Steps": metadata.get("steps"), "Sampler": sampler, "Schedule type": schedule,
        "CFG scale": metadata.get("text_guidance_scale"), "Seed": metadata.get("seed"),
        "Size": f"{width}x{height}" if width and height else None,
        "Model": _model_name(metadata.get("base_model")),
        "FaceStudio preset": metadata.get("preset"),
        "FaceStudio identities": ", ".join(str(p.get("name") or f"identity {i + 1}") for i, p in enumerate(people))
        or None,
        "FaceStudio strengths": ", ".join(_plain(p.get("strength", 1.0)) for p in people) or None,
        "FaceStudio regions": json.dumps(regions) if any(r is not None for r in regions) else None,
        "FaceStudio region source": metadata.get("regions") if people else None,
        "FaceStudio mix": _numbers(metadata.get("mix")),
        "FaceStudio reference scale": metadata.get("reference_guidance_scale") if people else None,
        "FaceStudio style strength": metadata.get("style_strength"),
        "FaceStudio scene faces": _numbers(metadata.get("scene_faces")),
        "FaceStudio adapters": ", ".join(str(a) for a in metadata.get("adapters") or ()) or None,
        "Version": metadata.get("software"),
    }
    line = ", ".join(f"{key}: {quote(value)}" for key, value in entries.items() if value is not None)
    text = prompt + (f"\nNegative prompt: {negative}" if negative else "")
    return f"{text}\n{line}".strip()


def _plain(value) -> str:
    """A number without a needless `.0` (A1111 writes `CFG scale: 7`), anything else as `str`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numbers(values) -> str | None:
    return None if values is None else ", ".join(_plain(v) for v in values)


def _model_name(base_model) -> str | None:
    """A1111's "Model" is the checkpoint's name: a local file or folder's name without its suffix, a hub id as is."""
    if not base_model:
        return None
    text = str(base_model)
    if text.startswith(("/", ".", "~")) or "\\" in text:
        path = PurePath(text)
        return path.stem if path.suffix in (".safetensors", ".ckpt", ".pt", ".bin") else path.name
    return text
