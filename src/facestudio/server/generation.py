"""A generation request checked against what is stored and what the pipeline accepts, then run as a job.

`prepare` does every check that needs no tensor work (identities and images exist, the request's
`GenerationSettings.validate` naming the JSON fields, regions fit, the adapters it needs, the scene image's stored
face count), so a bad request is a 4xx at submission, not a failed job later. `run` makes the images one by one
and writes each atomically with the same metadata and AI-generated label as `facestudio generate`, then the job's record (`record`), so a crash loses at most the image being made.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from .. import __version__
from ..errors import FaceStudioError
from ..imaging import ai_generated_metadata, load_image
from ..regions import check_scene_faces
from ..request import GenerationSettings, IdentityInput
from ..sampling.schedulers import DEFAULT_SCHEDULER
from .jobs import Job
from .schemas import GenerationRequest
from .storage import DataFolder


class NotFound(FaceStudioError):
    """A request names an identity or image the server does not hold."""


@dataclass(frozen=True)
class Plan:
    """Everything one job needs, resolved at submission: its own copy of every setting.

    `request` is what was asked (recorded as it came); `settings` what the pipeline runs (size, steps, reference
    scale and seed resolved; the style and scene images as stored files, loaded when the job runs).
    """

    request: GenerationRequest
    settings: GenerationSettings
    identity_info: tuple[dict, ...]

    @property
    def people(self) -> tuple[IdentityInput, ...]:
        return self.settings.identities

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def count(self) -> int:
        return self.settings.count

    @property
    def steps(self) -> int:
        return self.settings.num_inference_steps

    @property
    def total_steps(self) -> int:
        return self.steps * self.count


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
    settings = settings_of(request, people, data, default_steps).validate("api")
    settings = settings.resolved(pipe.default_side, _scene_size(request, data))
    width, height = settings.width, settings.height
    for name, side in (("width", width), ("height", height)):
        if side > max_side:
            raise FaceStudioError(f"{name} {side}: this server makes images at most {max_side} pixels wide and high")
    for i, person in enumerate(people):
        if person.region is not None:
            person.region.check(width, height, "api", prefix=f"identity {i + 1}: ")
    pipe.check_adapters(settings)
    if request.scene_image is not None and people:
        # The faces found at upload; the job finds them again at its own size (the same faces but in rare cases).
        check_scene_faces(len(_scene_info(data, request.scene_image)["faces"]), settings.slots, request.scene_faces)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    if seed + request.count - 1 > 2**53 - 1:
        raise FaceStudioError(f"seed {seed}: seed + count must stay below 2**53")
    return Plan(request, replace(settings, seed=seed), tuple(infos))


def settings_of(request: GenerationRequest, people: list[IdentityInput], data: DataFolder,
                default_steps: int) -> GenerationSettings:
    """The request as `GenerationSettings` (its images as their stored files, unresolved size)."""
    return GenerationSettings(
        request.prompt, request.negative_prompt, tuple(people), request.mix,
        style_image=None if request.style_image is None else data.image_path(request.style_image),
        style_strength=request.style_strength,
        scene_image=None if request.scene_image is None else data.image_path(request.scene_image),
        scene_faces=request.scene_faces, regions=request.regions, text_guidance_scale=request.text_guidance_scale,
        reference_guidance_scale=request.reference_guidance_scale,
        num_inference_steps=request.steps or default_steps, width=request.width, height=request.height,
        seed=request.seed, count=request.count, scheduler=request.scheduler or DEFAULT_SCHEDULER)


def _scene_size(request: GenerationRequest, data: DataFolder) -> tuple[int, int] | None:
    """`(width, height)` of the request's scene image as stored at upload (None: no scene image)."""
    if request.scene_image is None:
        return None
    info = _scene_info(data, request.scene_image)
    return info["width"], info["height"]


def _scene_info(data: DataFolder, image_id: str) -> dict:
    info = data.image_info(image_id)  # DamagedEntry when its description cannot be read
    if info is None:  # trimmed or deleted since it was checked
        raise NotFound(f"scene_image: no uploaded image with id {image_id}")
    return info


def run(pipe, data: DataFolder, job: Job, model: dict) -> None:
    """Make the job's images, writing each as soon as it exists; `job.progress` may stop it between steps."""
    plan: Plan = job.plan
    settings = replace(plan.settings, style_image=_stored_image(data, plan.request.style_image, "style image"),
                       scene_image=_stored_image(data, plan.request.scene_image, "scene image"))
    metadata_base = _metadata(plan, model, job.id)
    data.save_job(job.id, record(job))  # "running" on disk: a crash from here on reads as interrupted
    for i in range(plan.count):
        seed = plan.seed + i
        done_before = i * plan.steps
        result = pipe(replace(settings, seed=seed), on_step=lambda step, total: job.progress(done_before + step))
        image = result.images[0]
        metadata = ai_generated_metadata({**result.metadata, **metadata_base, "seed": seed, "width": image.width,
                                          "height": image.height})
        name = f"{i:03d}-seed{seed}.png"
        data.save_result(job.id, name, image, metadata)  # StorageError naming the folder when the disk is full
        job.images.append(name)
        job.changed += 1
        data.save_job(job.id, record(job))


def record(job: Job) -> dict:
    """What `job.json` holds: enough to list the job, its request and its images after a restart."""
    plan = job.plan
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


def _metadata(plan: Plan, model: dict, job_id: str) -> dict:
    """What the server adds to the pipeline's metadata (`labels.schema`: the same keys as `facestudio generate`)."""
    request = plan.request
    return {
        **plan.settings.metadata(), "command": "serve", "job": job_id,
        "base_model": model["base_model"],
        "identities": [{"id": info["id"], "name": info["name"], "photos": [p["name"] for p in info["photos"]],
                        "region": None if person.region is None else list(person.region),
                        "strength": person.strength}
                       for person, info in zip(plan.people, plan.identity_info)],
        "style_image": request.style_image, "scene_image": request.scene_image,
        "device": model["device"], "dtype": model["dtype"], "facestudio_version": __version__,
    }
