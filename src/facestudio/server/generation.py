"""A generation request checked against what is stored and what the pipeline accepts, then run as a job.

`prepare` does every check that needs no tensor work (identities and images exist, regions fit, the pipeline's
own `check_call`, the scene image's stored face count), so a bad request is a 4xx at submission, not a failed
job later. `run` makes the images one by one and writes each atomically with the same metadata and AI-generated
label as `facestudio generate`, then the job's record (`record`), so a crash loses at most the image being made.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .. import __version__
from ..errors import FaceStudioError
from ..imaging import ai_generated_metadata, load_image
from ..pipeline import IdentityInput
from ..regions import check_scene_faces
from .jobs import Job
from .schemas import GenerationRequest
from .storage import DataFolder


class NotFound(FaceStudioError):
    """A request names an identity or image the server does not hold."""


@dataclass(frozen=True)
class Plan:
    """Everything one job needs, resolved at submission: its own copy of every setting."""

    request: GenerationRequest
    people: tuple[IdentityInput, ...]
    identity_info: tuple[dict, ...]
    seed: int
    width: int
    height: int
    steps: int

    @property
    def total_steps(self) -> int:
        return self.steps * self.request.count


def prepare(pipe, data: DataFolder, request: GenerationRequest, *, max_side: int, max_count: int,
            default_steps: int) -> Plan:
    """Resolve and check a request; raises `NotFound` or `FaceStudioError` naming the problem."""
    if request.count > max_count:
        raise FaceStudioError(f"count {request.count}: this server makes at most {max_count} images per job")
    people, infos = [], []
    signature = pipe.identity_signature() if request.identities else None
    for i, placement in enumerate(request.identities):
        info = data.identity_info(placement.id)
        identity = None if info is None else data.load_identity(placement.id, info)
        if identity is None:
            raise NotFound(f"identity {i + 1}: no identity with id {placement.id}")
        if signature is not None and identity.recognizer != signature:
            # A data folder kept across a restart with another adapter or preset: its vectors mean nothing here.
            raise FaceStudioError(f"identity {i + 1} ({identity.name!r}, {placement.id}) was encoded for "
                                  f"{identity.recognizer!r}, but the loaded identity adapter reads {signature!r}: "
                                  "upload its photos again to this server")
        infos.append(info)
        people.append(IdentityInput(identity=identity, region=placement.region, strength=placement.strength,
                                    name=identity.name))
    for field in ("style_image", "scene_image"):
        image_id = getattr(request, field)
        if image_id is not None and data.image_path(image_id) is None:
            raise NotFound(f"{field}: no uploaded image with id {image_id}")
    width, height = _size(request, data, pipe.default_side)
    for name, side in (("width", width), ("height", height)):
        if side > max_side:
            raise FaceStudioError(f"{name} {side}: this server makes images at most {max_side} pixels wide and high")
    for i, person in enumerate(people):
        if person.region is not None:
            person.region.check(width, height, "api", prefix=f"identity {i + 1}: ")
    mix = request.mix
    if mix is not None and len(set(p.strength for p in people)) > 1:
        raise FaceStudioError("with mix the identities become one face: give them the same strength")
    # The pipeline's own checks, on stand-ins for the images (their content is checked when they load).
    scene = object() if request.scene_image is not None else None
    style = object() if request.style_image is not None else None
    steps = request.steps or default_steps
    pipe.check_call(request.prompt, people, mix, style, scene, height, width, steps,
                    request.text_guidance_scale, request.reference_guidance_scale
                    if request.reference_guidance_scale is not None else request.text_guidance_scale,
                    1, request.scene_faces, request.regions)
    if request.scene_faces is not None and len(request.scene_faces) != (1 if mix else len(people)):
        raise FaceStudioError(f"scene_faces: give {1 if mix else len(people)} face number(s), one per identity")
    if request.scene_image is not None and people:
        # The faces found at upload; the job finds them again at its own size (the same faces but in rare cases).
        check_scene_faces(len(_scene_info(data, request.scene_image)["faces"]), 1 if mix else len(people),
                          request.scene_faces)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    if seed + request.count - 1 > 2**53 - 1:
        raise FaceStudioError(f"seed {seed}: seed + count must stay below 2**53")
    return Plan(request, tuple(people), tuple(infos), seed, width, height, steps)


def _size(request: GenerationRequest, data: DataFolder, default_side: int) -> tuple[int, int]:
    """The output size: as asked, else the scene image's shape at the pipeline's default size (as it does)."""
    if request.width is not None and request.height is not None:
        return request.width, request.height
    if request.scene_image is not None and request.width is None and request.height is None:
        info = _scene_info(data, request.scene_image)
        scale = default_side / max(info["width"], info["height"])
        return tuple(max(8, round(side * scale / 8) * 8) for side in (info["width"], info["height"]))
    return request.width or default_side, request.height or default_side


def _scene_info(data: DataFolder, image_id: str) -> dict:
    info = data.image_info(image_id)  # DamagedEntry when its description cannot be read
    if info is None:  # trimmed or deleted since it was checked
        raise NotFound(f"scene_image: no uploaded image with id {image_id}")
    return info


def run(pipe, data: DataFolder, job: Job, model: dict) -> None:
    """Make the job's images, writing each as soon as it exists; `job.progress` may stop it between steps."""
    import torch

    plan: Plan = job.request
    request = plan.request
    style = _stored_image(data, request.style_image, "style image")
    scene = _stored_image(data, request.scene_image, "scene image")
    negative = None if request.negative_prompt is None else [request.negative_prompt]
    settings = _settings(plan, model, job.id)
    data.save_job(job.id, record(job))  # "running" on disk: a crash from here on reads as interrupted
    for i in range(request.count):
        seed = plan.seed + i
        done_before = i * plan.steps
        result = pipe(request.prompt, negative_prompt=negative, identities=list(plan.people), mix=request.mix,
                      style_image=style, style_strength=request.style_strength, scene_image=scene,
                      scene_faces=request.scene_faces, regions=request.regions, text_guidance_scale=request.text_guidance_scale,
                      reference_guidance_scale=request.reference_guidance_scale,
                      num_inference_steps=plan.steps, width=plan.width, height=plan.height,
                      generator=torch.Generator().manual_seed(seed),
                      callback_on_step_end=lambda step, total: job.progress(done_before + step))
        image = result.images[0]
        metadata = ai_generated_metadata({**settings, "seed": seed, "width": image.width, "height": image.height,
                                          "scheduler": result.settings.get("scheduler")})
        name = f"{i:03d}-seed{seed}.png"
        data.save_result(job.id, name, image, metadata)  # StorageError naming the folder when the disk is full
        job.images.append(name)
        job.changed += 1
        data.save_job(job.id, record(job))


def record(job: Job) -> dict:
    """What `job.json` holds: enough to list the job, its request and its images after a restart."""
    plan = job.request
    return {"id": job.id, "state": job.state, "step": job.step, "total_steps": job.total_steps,
            "images": list(job.images), "error": job.error, "interrupted": job.interrupted,
            "request": plan.request.model_dump(mode="json"), "seed": plan.seed, "created": job.created,
            "started": job.started, "finished": job.finished}


def _stored_image(data: DataFolder, image_id: str | None, label: str):
    if image_id is None:
        return None
    path = data.image_path(image_id)
    if path is None:
        raise NotFound(f"{label} {image_id} was deleted before the job ran")
    return load_image(path, name=label)


def _settings(plan: Plan, model: dict, job_id: str) -> dict:
    """What the images' metadata records, in the same keys as `facestudio generate` where they mean the same."""
    request = plan.request
    return {
        "command": "serve", "job": job_id, "prompt": request.prompt, "negative_prompt": request.negative_prompt,
        "base_model": model["base_model"], "adapters": [a.get("kind") for a in model["adapters"]],
        "identities": [{"id": info["id"], "name": info["name"], "photos": [p["name"] for p in info["photos"]],
                        "region": None if person.region is None else list(person.region),
                        "strength": person.strength}
                       for person, info in zip(plan.people, plan.identity_info)],
        "mix": request.mix, "style_image": request.style_image,
        "style_strength": request.style_strength if request.style_image else None,
        "scene_image": request.scene_image, "scene_faces": request.scene_faces, "regions": request.regions or "auto",
        "steps": plan.steps, "text_guidance_scale": request.text_guidance_scale,
        "reference_guidance_scale": request.text_guidance_scale if request.reference_guidance_scale is None
        else request.reference_guidance_scale,
        "num_images": request.count, "device": model["device"], "dtype": model["dtype"],
        "facestudio_version": __version__,
    }
