"""A generation request checked against what is stored and what the pipeline accepts, then run as a job.

`prepare` does every check that needs no tensor work (identities and images exist, the request's
`GenerationSettings.validate` naming the JSON fields, regions fit, the adapters it needs, the scene image's stored
face count), so a bad request is a 4xx at submission, not a failed job later. `run` makes the images one by one
and writes each atomically with the same metadata and AI-generated label as `facestudio generate`, then the job's record (`record`), so a crash loses at most the image being made.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from .. import __version__
from ..errors import FaceStudioError
from ..imaging import ai_generated_metadata, load_image
from ..labels.schema import region_value
from ..labels.write import encode_labelled
from ..regions import Box, check_scene_faces
from ..request import DEFAULT_TEXT_SCALE, FIELD_NAMES, GenerationSettings, IdentityInput
from ..sampling.schedulers import DEFAULT_SCHEDULER
from ..sampling.speed import loaded_speed_model
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

    request: Any
    settings: GenerationSettings
    identity_info: tuple[dict, ...]
    #: Results go to the data folder and the job is listed (False: `InlinePlan`).
    keep: ClassVar[bool] = True

    def job_settings(self, data: DataFolder) -> GenerationSettings:
        """The settings a worker runs: the style and scene images loaded from the data folder now."""
        return replace(self.settings, style_image=_stored_image(data, self.request.style_image, "style image"),
                       scene_image=_stored_image(data, self.request.scene_image, "scene image"))

    def image_names(self) -> dict:
        """How the images' metadata names the style and scene images (their upload ids)."""
        return {"style_image": self.request.style_image, "scene_image": self.request.scene_image}

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


@dataclass(frozen=True)
class InlinePlan(Plan):
    """A synchronous request's job (the A1111 API): its images given in the request (already decoded and checked
    in `settings`), its results held in the job's memory (`Job.results`, encoded PNGs) for the answer. Nothing
    is written to the data folder and the job is not listed: as A1111's API, which saves nothing by default."""

    names: tuple[tuple[str, str | None], ...] = ()
    keep: ClassVar[bool] = False

    def job_settings(self, data: DataFolder) -> GenerationSettings:
        return self.settings

    def image_names(self) -> dict:
        return dict(self.names)


def prepare(pipe, data: DataFolder, request: GenerationRequest, *, max_side: int, max_count: int,
            default_steps: int) -> Plan:
    """Resolve and check a request; raises `NotFound` or `FaceStudioError` naming the problem."""
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
    scene = None if request.scene_image is None else _scene_info(data, request.scene_image)
    settings = settings_of(request, people, data, default_steps, defaults_of(pipe))
    settings = checked(pipe, settings, "api", max_side=max_side, max_count=max_count,
                       scene=None if scene is None else (scene["width"], scene["height"], len(scene["faces"])))
    return Plan(request, settings, tuple(infos))


def checked(pipe, settings: GenerationSettings, front: str, *, max_side: int, max_count: int,
            scene: tuple[int, int, int] | None = None) -> GenerationSettings:
    """`settings` checked against the pipeline and this server's limits, size and seed resolved: the checks of
    every front end of the server (`front`, as `GenerationSettings.validate` names fields). `scene` is the scene
    image's `(width, height, faces found)` as seen at upload."""
    names = FIELD_NAMES[front]
    if settings.count > max_count:
        raise FaceStudioError(f"{names.get('count', 'count')} {settings.count}: this server makes at most "
                              f"{max_count} images per job")
    settings = settings.validate(front).resolved(pipe.default_side, None if scene is None else scene[:2])
    width, height = settings.width, settings.height
    for name, side in (("width", width), ("height", height)):
        if side > max_side:
            raise FaceStudioError(f"{names.get(name, name)} {side}: this server makes images at most {max_side} "
                                  "pixels wide and high")
    for i, person in enumerate(settings.identities):
        if isinstance(person.region, Box):
            person.region.check(width, height, front, prefix=f"identity {i + 1}: ")
    pipe.check_adapters(settings)
    if scene is not None and settings.identities:
        # The faces found at upload; the job finds them again at its own size (the same faces but in rare cases).
        check_scene_faces(scene[2], settings.slots, settings.scene_faces)
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**32)
    if seed + settings.count - 1 > 2**53 - 1:
        raise FaceStudioError(f"{names.get('seed', 'seed')} {seed}: seed + number of images must stay below 2**53")
    return replace(settings, seed=seed)


def defaults_of(pipe) -> dict:
    """What a request leaves out, from the loaded models as the CLI takes them: the speed model's sampler,
    steps and scale, else the preset's (a FLUX preset's scale 1 and distilled guidance, PuLID-Lightning's Euler
    trailing in 4 steps), else the general defaults; the preset's negative prompt."""
    speed, preset = loaded_speed_model(pipe), getattr(pipe, "preset", None)
    if speed is not None:
        scheduler, steps, text_scale, reference_scale = speed.scheduler, speed.steps, speed.guidance_scale, \
            speed.guidance_scale
    elif preset is not None:
        scheduler, steps, text_scale, reference_scale = preset.scheduler, preset.steps, preset.text_guidance_scale, \
            preset.reference_guidance_scale
    else:
        scheduler, steps, text_scale, reference_scale = DEFAULT_SCHEDULER, None, DEFAULT_TEXT_SCALE, None
    return {"scheduler": scheduler, "text_guidance_scale": text_scale, "reference_guidance_scale": reference_scale,
            "steps": steps, "speed": speed.name if speed else "",
            "distilled_guidance_scale": getattr(preset, "distilled_guidance_scale", None),
            "start_step": getattr(preset, "start_step", 0),
            "negative_prompt": preset.negative_prompt if preset is not None else None,
            "decoder": getattr(pipe, "default_decoder", "full")}


def settings_of(request: GenerationRequest, people: list[IdentityInput], data: DataFolder,
                default_steps: int, defaults: dict | None = None) -> GenerationSettings:
    """The request as `GenerationSettings` (its images as their stored files, unresolved size), what it leaves
    out from `default_steps` (the server's) and `defaults` (`defaults_of`)."""
    defaults = defaults or {}
    negative = request.negative_prompt if request.negative_prompt is not None else defaults.get("negative_prompt")
    text_scale = request.text_guidance_scale if request.text_guidance_scale is not None else \
        defaults.get("text_guidance_scale", DEFAULT_TEXT_SCALE)
    # the preset's reference scale only with its text scale (a request's own text scale also sets the reference's)
    reference_scale = request.reference_guidance_scale if request.reference_guidance_scale is not None else \
        None if request.text_guidance_scale is not None else defaults.get("reference_guidance_scale")
    return GenerationSettings(
        request.prompt, negative or None, tuple(people), request.mix,
        style_image=None if request.style_image is None else data.image_path(request.style_image),
        style_strength=request.style_strength,
        scene_image=None if request.scene_image is None else data.image_path(request.scene_image),
        scene_faces=request.scene_faces, regions=request.regions, text_guidance_scale=text_scale,
        reference_guidance_scale=reference_scale, reference_guidance_start=request.reference_guidance_start,
        distilled_guidance_scale=defaults.get("distilled_guidance_scale"), start_step=defaults.get("start_step", 0),
        num_inference_steps=request.steps or default_steps, width=request.width,
        height=request.height, seed=request.seed, count=request.count,
        scheduler=request.scheduler or defaults.get("scheduler", DEFAULT_SCHEDULER),
        speed=request.speed if request.speed is not None else defaults.get("speed", ""),
        shortcut_scale=request.shortcut_scale, decoder=request.decoder or defaults.get("decoder", "full"))


def _scene_info(data: DataFolder, image_id: str) -> dict:
    info = data.image_info(image_id)  # DamagedEntry when its description cannot be read
    if info is None:  # trimmed or deleted since it was checked
        raise NotFound(f"scene_image: no uploaded image with id {image_id}")
    return info


def run(pipe, data: DataFolder, job: Job, model: dict) -> None:
    """Make the job's images, writing each as soon as it exists; `job.progress` may stop it between steps."""
    plan: Plan = job.plan
    settings = plan.job_settings(data)
    metadata_base = _metadata(plan, model, job.id)
    if plan.keep:
        data.save_job(job.id, record(job))  # "running" on disk: a crash from here on reads as interrupted
    for i in range(plan.count):
        seed = plan.seed + i
        done_before = i * plan.steps
        preview = None if getattr(pipe, "tiny_vae", None) is None else \
            (lambda step, total, image: job.show_preview(data_url(image)))
        result = pipe(replace(settings, seed=seed), on_step=lambda step, total: job.progress(done_before + step),
                      preview=preview)
        image = result.images[0]
        metadata = ai_generated_metadata({**result.metadata, **metadata_base, "seed": seed, "width": image.width,
                                          "height": image.height})
        name = f"{i:03d}-seed{seed}.png"
        if not plan.keep:
            job.results.append(encode_labelled(image, metadata, ".png", title=name))
            job.images.append(name)
            job.changed += 1
            continue
        data.save_result(job.id, name, image, metadata)  # StorageError naming the folder when the disk is full
        job.images.append(name)
        job.changed += 1
        data.save_job(job.id, record(job))


def data_url(image) -> str:
    """A small image as a `data:image/jpeg;base64,...` URL (what a progress event carries as its preview)."""
    import base64
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
    return {
        **plan.settings.metadata(), "command": "serve", "job": job_id,
        "base_model": model["base_model"],
        "identities": [{**({"id": info["id"]} if "id" in info else {}), "name": info["name"],
                        "photos": [p["name"] for p in info["photos"]],
                        "region": region_value(person.region), "strength": person.strength,
                        **info.get("metadata", {})}
                       for person, info in zip(plan.people, plan.identity_info)],
        **plan.image_names(),
        "device": model["device"], "dtype": model["dtype"], "facestudio_version": __version__,
    }
