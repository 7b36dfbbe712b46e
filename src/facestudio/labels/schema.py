"""The one metadata schema of a generated image, the same from the CLI, the server and Python.

Keys (a front end adds only its own: `command`, `preset`, `job`, photo and image file names, `device`):
    prompt, negative_prompt, seed, steps, scheduler, text_guidance_scale, reference_guidance_scale, width, height,
    num_images, mix, style_strength, scene_faces, regions (the region source: auto, split, segment)
    base_model (`str`): the base model's hub id or folder
    adapters (`list[dict]`): `{"kind": "identity" | "style", "type": the adapter kind's name, "source": the folder
        or preset it came from, where known}`
    identities (`list[dict]`): `{"name", "strength", "region": [x0, y0, x1, y1] | "mask" | None}`, plus `photos`
        (file names) and `face` or `id` where the front end has them
    style_image, scene_image: the file name or upload id, `True` when given as an image object, else None
    ai_generated, digital_source_type, software: the label (`imaging.ai_generated_metadata`)

Files written before this schema name the adapters differently (the CLI's `adapter` / `style_adapter` paths, the
server's `adapters` as a list of kind names): `normalised` reads them into it.
"""

from __future__ import annotations


def normalised(metadata: dict) -> dict:
    """`metadata` in the current schema (older files' adapter keys rewritten; anything else as it was)."""
    metadata = dict(metadata)
    adapters = metadata.get("adapters")
    if isinstance(adapters, list) and all(isinstance(a, str) for a in adapters):
        metadata["adapters"] = [{"kind": kind} for kind in adapters]
    if "adapter" in metadata or "style_adapter" in metadata:
        old = [("identity", metadata.pop("adapter", None)), ("style", metadata.pop("style_adapter", None))]
        metadata.setdefault("adapters", [{"kind": kind, "source": source} for kind, source in old if source])
    return metadata


def region_value(region) -> list | str | None:
    """A person's region as the metadata records it: a box as `[x0, y0, x1, y1]`, a mask as `"mask"`."""
    from ..regions import Box

    if region is None:
        return None
    return list(region) if isinstance(region, Box) else "mask"
