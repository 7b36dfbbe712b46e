"""`create_app`: the FastAPI app of `facestudio serve`, around a ready pipeline.

    /                                  the web page (static files, no external resources)
    /v1/models                         what is loaded, device, dtype, this server's limits
    /v1/queue                          jobs waiting and running now
    /v1/identities                     POST photos of one person -> identity; GET list (+ damaged); GET/DELETE one
    /v1/images                         POST a style or scene image -> image id (+ the faces in it)
    /v1/generations                    POST a job -> 202 + status; GET recent jobs
    /v1/generations/{id}               status: state, step i of n, results
    /v1/generations/{id}/events        the same as a server-sent event stream, until the job ends (with the
                                       tiny decoder loaded, each progress event's `preview` is the step's
                                       image as a data URL)
    /v1/generations/{id}/images/{name} a result PNG
    /v1/generations/{id}/cancel        POST: stop it (a waiting job frees its slot at once)

Errors are JSON `{"error": "..."}` naming the problem, with a 4xx status (409: a stored entry is damaged; 507:
the data folder cannot be written); the OpenAPI schema is /openapi.json.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Optional

from fastapi import Body, FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import AmbiguousFaceError, FaceStudioError, ImageError, NoFaceError
from ..imaging import to_array
from ..regions import available_choices
from ..sampling.schedulers import SCHEDULERS
from ..request import DEFAULT_STEPS
from . import generation
from .a1111 import responses as a1111_responses
from .guard import Guard
from .jobs import FINISHED, Job, JobQueue, QueueFull
from .schemas import GenerationRequest, IdentityChange, IdentityInfo, IdentityList, ImageInfo, JobStatus, ModelInfo
from .schemas import Problem
from .schemas import QueueInfo
from .storage import ID_PATTERN, RESULT_NAME_PATTERN, DamagedEntry, DataFolder, StorageError, result_seed
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_PIXELS, UploadError, UploadLimits, UploadPool
from .uploads import decode_upload, face_json, face_thumbnail, read_photos, safe_filename

logger = logging.getLogger(__name__)

#: Photos accepted in one identity upload.
MAX_PHOTOS = 8
#: Seconds between event-stream checks of a job, and between keep-alive comments.
_POLL_S, _KEEPALIVE_S = 0.1, 15.0
#: Path parameters: ids the server made, and result names; anything else is refused before a file is touched.
IdParam = Annotated[str, PathParam(pattern=ID_PATTERN)]
NameParam = Annotated[str, PathParam(pattern=RESULT_NAME_PATTERN)]
_ERRORS = {400: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}, 413: {"model": Problem},
           415: {"model": Problem}, 422: {"model": Problem}, 429: {"model": Problem}, 507: {"model": Problem}}


def create_app(pipe, data_dir, *, queue_size: int = 16, workers: int = 1, token: str | None = None,
               job_timeout: float | None = 600.0, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, max_side: int = 1024, max_count: int = 8,
               default_steps: int | None = None, max_jobs: int = 200, base_model: str = "(given pipeline)",
               allowed_hosts=None, upload_workers: int = 2, upload_waiting: int = 16, a1111: bool = False) -> FastAPI:
    """The app serving `pipe` (a loaded `FaceStudioPipeline`) from the data folder `data_dir`.

    Args:
        pipe: the pipeline; one call at a time per worker.
        data_dir (`str`, `Path` or `DataFolder`): where identities, uploaded images and results live (see
            `storage`); `StorageError` when it cannot be written.
        queue_size (`int`, defaults to 16): jobs allowed to wait; more get 429 with Retry-After.
        workers (`int`, defaults to 1): jobs run at once (one per device).
        token (`str`, *optional*): required as a bearer token on every `/v1/` request.
        job_timeout (`float`, *optional*): seconds a job may run before it stops (None: no limit).
        max_upload_bytes (`int`): largest request body; max_upload_pixels (`int`): largest uploaded image.
        max_side (`int`), max_count (`int`): this server's generation limits.
        default_steps (`int`, *optional*): steps of a job that gives none (default: the loaded speed model's,
            else the preset's, else the general default).
        max_jobs (`int`, defaults to 200): finished jobs (and uploaded images) kept on disk.
        base_model (`str`): the base model's name, reported by /v1/models and written into image metadata.
        allowed_hosts: Host names accepted without a token besides the loopback names.
        upload_workers (`int`, defaults to 2), upload_waiting (`int`, defaults to 16): uploads decoded at once,
            and how many more may wait before one gets 429 (see `uploads.UploadPool`: bounds memory).
        a1111 (`bool`, defaults to False): serve the AUTOMATIC1111-compatible API too (`/sdapi/v1/...`,
            `/controlnet/...`; see `server.a1111`), on the same queue, limits and token.

    Returns:
        `FastAPI`; `app.state.queue` is its `JobQueue` (close it, or let the app's shutdown do it).
    """
    data = data_dir if isinstance(data_dir, DataFolder) else DataFolder(data_dir, max_jobs=max_jobs)
    limits = UploadLimits(max_upload_bytes, max_upload_pixels)
    upload_pool = UploadPool(upload_workers, upload_waiting)
    model = _model_info(pipe, base_model)
    defaults = generation.defaults_of(pipe)  # what the loaded models say a request leaves out
    default_steps = default_steps or defaults["steps"] or DEFAULT_STEPS
    jobs: collections.OrderedDict[str, Job] = _past_jobs(data)  # the gallery survives a restart
    jobs_lock = threading.Lock()
    identities_lock = threading.Lock()  # checking for a same identity or name, then writing

    def finished(job: Job) -> None:
        if not job.plan.keep:  # a synchronous request's job: its answer holds the images, nothing is on disk
            return
        try:
            data.save_job(job.id, generation.record(job))
        except StorageError as e:  # a full disk: the job's state is still right in memory, and said once here
            logger.warning("job %s: its final record was not written: %s", job.id, e)
        with jobs_lock:  # forget the oldest finished jobs beyond the retention limit (their files go too)
            done = [j for j in jobs.values() if j.state in FINISHED]
            for old in done[:max(0, len(done) - max_jobs)]:
                jobs.pop(old.id, None)
            active = {j.id for j in jobs.values() if j.state not in FINISHED}
        data.trim_jobs(keep=active)

    queue = JobQueue(lambda job: generation.run(pipe, data, job, model), max_queued=queue_size, workers=workers,
                     timeout=job_timeout, on_finish=finished)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        queue.cancel_running()  # the server is stopping: running jobs end at their next step
        await asyncio.to_thread(queue.close)

    app = FastAPI(title="facestudio", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Identity-preserving image generation on this machine. Only use photos of people "
                              "who agreed to it; every image made carries an AI-generated label.")
    app.state.queue, app.state.data, app.state.jobs = queue, data, jobs
    _add_error_handlers(app)
    _state_limits_in_schema(app, max_count=max_count, max_side=max_side)

    # ------------------------------------------------------------------ page and models

    static = Path(str(resources.files("facestudio.server") / "static"))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page():
        return FileResponse(static / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/v1/models", response_model=ModelInfo, summary="What is loaded, where, and this server's limits")
    def models():
        return {**model, "workers": queue.workers, "queue_size": queue.max_queued, "max_side": max_side,
                "default_side": pipe.default_side,
                "max_count": max_count, "default_steps": default_steps,
                "regions": available_choices(), "schedulers": list(SCHEDULERS), "speed": defaults["speed"] or None,
                "negative_prompt": defaults["negative_prompt"], "shortcut_scale": pipe.shortcut_scale(),
                "preview": getattr(pipe, "tiny_vae", None) is not None,
                "version": __version__}

    @app.get("/v1/queue", response_model=QueueInfo, summary="Jobs waiting and running now")
    def queue_state():
        return {"waiting": len(queue.waiting), "running": len(queue.running), "size": queue.max_queued,
                "workers": queue.workers, "max_waiting_seen": queue.max_waiting_seen}

    # ------------------------------------------------------------------ identities

    @app.post("/v1/identities", status_code=201, response_model=IdentityInfo, responses=_ERRORS,
              summary="Photos of one person -> a stored identity")
    async def create_identity(response: Response,
                              photos: list[UploadFile] = File(description="one to 8 photos of the same person"),
                              name: Optional[str] = Form(None, max_length=100),
                              face: Optional[int] = Form(None, ge=0, le=64,
                                                         description="which face of each photo (0 is the largest)")):
        """The same photos (and face) uploaded again give the identity already stored (200, not 201); a new
        identity whose name is taken gets a number ("obama 2")."""
        if len(photos) > MAX_PHOTOS:
            raise UploadError(f"{len(photos)} photos: at most {MAX_PHOTOS} per identity", 400)
        info, created = await upload_pool.run(new_identity, photos, name, face)
        response.status_code = 201 if created else 200
        return info

    def new_identity(photos: list[UploadFile], name: str | None, face: int | None) -> tuple[dict, bool]:
        """In an upload-pool thread: each photo decoded (at most 2048 px) and analysed in turn; the decoded
        photos are kept only until the identity is encoded. Returns `(info, created)`."""
        labelled = ((safe_filename(u.filename, f"photo {i + 1}"), u.file.read(limits.max_bytes + 1))
                    for i, u in enumerate(photos))  # read one by one, as each is analysed
        # The shared rule (`face`, or the one clear face), its advice naming this request's field.
        arrays, chosen, described, digests = read_photos(pipe.get_face_analyzer(), labelled, limits, face,
                                                         "the 'face' field")
        # The same files with the same faces are the same identity, whatever their order or names.
        photos_key = hashlib.sha256(json.dumps(sorted(zip(digests, (d["used"] for d in described)))).encode()
                                    ).hexdigest()
        existing = _identity_with(photos_key)
        if existing is not None:
            return _with_embedding(existing), False
        identity_id = secrets.token_hex(8)
        display = (name or "").strip() or "+".join(Path(d["name"]).stem for d in described)[:100]
        # Encoded the way the loaded identity adapter reads it (facestudio's own, or a public preset's encoders).
        identity = pipe.encode_photos(arrays, chosen, name=display)
        thumbnail = face_thumbnail(arrays[0], chosen[0])
        with identities_lock:  # the check and the write together: two same uploads at once make one identity
            existing = _identity_with(photos_key)
            if existing is not None:
                return _with_embedding(existing), False
            info = {"id": identity_id, "name": _free_name(display), "recognizer": identity.recognizer,
                    "created": time.time(), "photos": described, "photos_key": photos_key}
            data.save_identity(identity_id, identity, info, thumbnail)
        return {**info, "embedding": identity.embedding.tolist(),
                "thumbnail": f"/v1/identities/{identity_id}/thumbnail"}, True

    def _identity_with(photos_key: str) -> dict | None:
        return next((i for i in data.list_identities()[0] if i.get("photos_key") == photos_key), None)

    def _free_name(name: str, exclude: str | None = None) -> str:
        """`name`, or `name 2`, `name 3`, ... when another identity has it."""
        taken = {i["name"] for i in data.list_identities()[0] if i["id"] != exclude}
        return name if name not in taken else next(f"{name} {n}" for n in range(2, len(taken) + 3)
                                                    if f"{name} {n}" not in taken)

    @app.get("/v1/identities", response_model=IdentityList,
             summary="Every stored identity, and those whose files are damaged (left out of the list)")
    def list_identities():
        infos, damaged = data.list_identities()
        listed = []
        for info in infos:
            try:
                listed.append(_with_embedding(info))
            except DamagedEntry as e:  # its arrays: one damaged entry never hides the others
                damaged.append({"id": info["id"], "error": str(e)})
        return {"identities": listed, "damaged": sorted(damaged, key=lambda d: d["id"])}

    @app.get("/v1/identities/{identity_id}", response_model=IdentityInfo, responses=_ERRORS)
    def get_identity(identity_id: IdParam):
        info = data.identity_info(identity_id)
        if info is None:
            raise StarletteHTTPException(404, f"no identity with id {identity_id[:80]}")
        return _with_embedding(info)

    def _with_embedding(info: dict) -> dict:
        identity = data.load_identity(info["id"], info)  # its JSON already read: only the arrays are opened
        thumbnail = data.identity_thumbnail(info["id"])
        return {**info, "embedding": [] if identity is None else identity.embedding.tolist(),
                "thumbnail": None if thumbnail is None else f"/v1/identities/{info['id']}/thumbnail"}

    @app.get("/v1/identities/{identity_id}/thumbnail", response_class=FileResponse, responses=_ERRORS,
             summary="A small picture of the identity's face (identities stored before thumbnails have none)")
    def identity_thumbnail(identity_id: IdParam):
        path = data.identity_thumbnail(identity_id)
        if path is None:
            raise StarletteHTTPException(404, f"no thumbnail for identity {identity_id[:80]}")
        return FileResponse(path, media_type="image/png")

    @app.patch("/v1/identities/{identity_id}", response_model=IdentityInfo, responses=_ERRORS,
               summary="Rename an identity")
    def rename_identity(identity_id: IdParam, change: IdentityChange):
        name = change.name.strip()
        if not name:
            raise UploadError("name: must not be empty", 422)
        with identities_lock:
            if data.identity_info(identity_id) is None:
                raise StarletteHTTPException(404, f"no identity with id {identity_id[:80]}")
            if _free_name(name, exclude=identity_id) != name:
                raise UploadError(f"name {name!r}: another identity has it; choose another", 409)
            info = data.rename_identity(identity_id, name)
        return _with_embedding(info)

    @app.delete("/v1/identities/{identity_id}", status_code=204, responses=_ERRORS)
    def delete_identity(identity_id: IdParam):
        if not data.delete_identity(identity_id):
            raise StarletteHTTPException(404, f"no identity with id {identity_id[:80]}")
        return Response(status_code=204)

    # ------------------------------------------------------------------ style and scene images

    @app.post("/v1/images", status_code=201, response_model=ImageInfo, responses=_ERRORS,
              summary="A style or scene image -> an image id for generation requests")
    async def upload_image(image: UploadFile = File(description="the image"),
                           purpose: Optional[Literal["style", "scene"]] = Form(
                               None, description="what it is for: a scene image must show a face")):
        return await upload_pool.run(new_image, image, purpose)

    def new_image(upload: UploadFile, purpose: str | None = None) -> dict:
        """In an upload-pool thread. Kept at most `ANALYSIS_SIDE` pixels wide and high: what generation needs."""
        label = safe_filename(upload.filename, "image")
        image = decode_upload(upload.file.read(limits.max_bytes + 1), label, limits, min_side=8).image
        faces = pipe.get_face_analyzer().detect(to_array(image))
        if purpose == "scene" and not faces:
            raise UploadError(f"{label}: no face found; a scene image's faces are replaced by the people, so it "
                              "must show at least one (use it as a style image instead)", 422)
        image_id = secrets.token_hex(8)
        info = {"id": image_id, "name": label, "width": image.width, "height": image.height,
                "faces": [face_json(f) for f in faces]}
        data.save_image(image_id, image, info)  # re-encoded: the uploaded bytes are never kept
        return info

    @app.get("/v1/images/{image_id}", response_class=FileResponse, responses=_ERRORS)
    def get_image(image_id: IdParam):
        path = data.image_path(image_id)
        if path is None:
            raise StarletteHTTPException(404, f"no uploaded image with id {image_id[:80]}")
        return FileResponse(path, media_type="image/png")

    # ------------------------------------------------------------------ generations

    @app.post("/v1/generations", status_code=202, response_model=JobStatus,
              responses={**_ERRORS, 429: {"model": Problem, "description": "queue full; see Retry-After"}},
              summary="Queue a generation job")
    def create_generation(request: GenerationRequest):
        plan = generation.prepare(pipe, data, request, max_side=max_side, max_count=max_count,
                                  default_steps=default_steps)
        job = Job(secrets.token_hex(8), plan, plan.total_steps)
        # The first record is on disk before a worker can touch the job: the worker's final record (written
        # when the job ends, however fast) then always comes after it and is never overwritten by "queued".
        data.save_job(job.id, generation.record(job))
        with jobs_lock:
            jobs[job.id] = job
        try:
            queue.submit(job)
        except Exception as e:  # not queued (full, or the server is stopping): no trace of it is kept
            with jobs_lock:
                jobs.pop(job.id, None)
            data.delete_job(job.id)
            if not isinstance(e, QueueFull):
                raise
            return JSONResponse({"error": str(e)}, status_code=429, headers={"Retry-After": str(e.retry_after)})
        return _status(job)

    @app.get("/v1/generations", response_model=list[JobStatus], summary="Recent jobs, newest first")
    def list_generations(limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         offset: Annotated[int, Query(ge=0, description="jobs to skip (pages of the gallery)")] = 0):
        with jobs_lock:
            recent = list(jobs.values())[::-1][offset:offset + limit]
        return [_status(j) for j in recent]

    def _job(job_id: IdParam) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise StarletteHTTPException(404, f"no generation job with id {job_id[:80]}")
        return job

    def _status(job: Job) -> dict:
        return {**generation.record(job), "queue_position": queue.position(job),
                "images": [{"name": n, "url": f"/v1/generations/{job.id}/images/{n}", "seed": result_seed(n)}
                           for n in list(job.images)]}

    @app.get("/v1/generations/{job_id}", response_model=JobStatus, responses=_ERRORS)
    def get_generation(job_id: IdParam):
        return _status(_job(job_id))

    @app.get("/v1/generations/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
             response_class=StreamingResponse, summary="Progress as server-sent events until the job ends")
    async def generation_events(job_id: IdParam, request: Request):
        job = _job(job_id)

        async def events():
            seen, last_sent = -1, time.monotonic()
            while True:
                if job.changed != seen:
                    seen = job.changed
                    status = _status(job)
                    kind = "end" if job.state in FINISHED else "progress"
                    if job.preview is not None:
                        status["preview"] = job.preview  # the latest step's image (tiny decoder loaded)
                    yield f"event: {kind}\ndata: {json.dumps(status)}\n\n"
                    last_sent = time.monotonic()
                    if kind == "end":
                        return
                elif time.monotonic() - last_sent > _KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(_POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/generations/{job_id}/images/{name}", response_class=FileResponse, responses=_ERRORS)
    def generation_image(job_id: IdParam, name: NameParam):
        path = data.job_image(job_id, name)
        if path is None:
            raise StarletteHTTPException(404, f"job {job_id[:80]} has no image {name[:80]}")
        return FileResponse(path, media_type="image/png", filename=f"facestudio-{job_id[:8]}-{name}")

    @app.delete("/v1/generations/{job_id}/images/{name}", status_code=204, responses=_ERRORS,
                summary="Delete one image of a finished job")
    def delete_generation_image(job_id: IdParam, name: NameParam):
        job = _job(job_id)
        if job.state not in FINISHED:
            raise UploadError(f"job {job_id} is still {job.state}: delete its images once it has ended", 409)
        if name not in job.images or not data.delete_result(job_id, name):
            raise StarletteHTTPException(404, f"job {job_id} has no image {name}")
        job.images.remove(name)
        job.changed += 1
        data.save_job(job.id, generation.record(job))
        return Response(status_code=204)

    @app.post("/v1/generations/{job_id}/cancel", response_model=JobStatus, responses=_ERRORS,
              summary="Stop a job: a waiting one at once, a running one at its next step")
    def cancel_generation(job_id: IdParam):
        job = _job(job_id)
        if job.state not in FINISHED:
            queue.cancel(job)
        return _status(job)

    if a1111:
        from .a1111 import add_routes

        add_routes(app, pipe=pipe, queue=queue, upload_pool=upload_pool, limits=limits, base_model=base_model,
                   max_side=max_side, max_count=max_count, default_steps=default_steps)
    app.add_middleware(Guard, max_body=max_upload_bytes, token=token, allowed_hosts=allowed_hosts,
                       error_body=_refusal_body)
    return app


#: The page loads nothing from elsewhere: the browser is told so too.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                            "connect-src 'self'; frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _model_info(pipe, base_model: str) -> dict:
    adapters = [{"kind": a.kind, **{k: v for k, v in a.config.to_dict().items() if k != "kind"}}
                for a in getattr(pipe, "facestudio_adapters", ())]
    return {"base_model": str(base_model), "adapters": adapters, "device": str(pipe.device),
            "dtype": str(pipe.dtype).removeprefix("torch."), "scheduler": type(pipe.scheduler).__name__}


@dataclasses.dataclass(frozen=True)
class _PastPlan:
    """What a job recorded by an earlier run of the server still tells: its request and first seed."""

    request: GenerationRequest
    seed: int

    @property
    def count(self) -> int:
        return self.request.count


def _past_jobs(data: DataFolder) -> collections.OrderedDict:
    """Jobs recorded in the data folder, oldest first. One the server stopped during is marked failed and
    interrupted, with the images that reached the disk (its record may predate the last of them); its record is
    rewritten so."""
    restored = []
    for path, record in data.job_records():
        try:
            job = Job(record["id"], _PastPlan(GenerationRequest(**record["request"]), int(record["seed"])),
                      int(record["total_steps"]), state=record["state"], step=int(record["step"]),
                      images=data.job_images(record["id"]), error=record["error"],
                      interrupted=bool(record.get("interrupted", False)), created=record["created"],
                      started=record["started"], finished=record["finished"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("%s: not a job record (%s); ignored", path, e)
            continue
        if job.state not in FINISHED:
            count = job.plan.count
            job.error = (f"interrupted: the server stopped while this job ran; {len(job.images)} of {count} images "
                         "were made and are kept" if job.started is not None else
                         "interrupted: the server stopped before this job started; submit it again")
            job.state, job.interrupted, job.finished = "failed", True, job.finished or time.time()
            try:
                data.save_job(job.id, generation.record(job))
            except StorageError as e:
                logger.warning("job %s: %s", job.id, e)
        restored.append(job)
    return collections.OrderedDict((j.id, j) for j in sorted(restored, key=lambda j: j.created))


def _refusal_body(path: str, status: int, message: str) -> dict:
    """The body of a refusal by `Guard`: A1111's error shape on its routes."""
    return a1111_responses.error_body("HTTPException", message) if a1111_responses.is_a1111(path) else \
        {"error": message}


def _problem(request, status: int, message: str, kind: str, headers=None, detail=None) -> JSONResponse:
    """An error answer: `{"error": message}`, or on the A1111 routes A1111's shape (`kind` is its `error`)."""
    body = a1111_responses.error_body(kind, message, detail) if a1111_responses.is_a1111(request.url.path) else \
        {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _state_limits_in_schema(app: FastAPI, *, max_count: int, max_side: int) -> None:
    """/openapi.json states this server's limits (the ones /v1/models reports and a request is held to), not
    only the request model's outer bounds."""
    generate_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate_schema()
            fields = schema["components"]["schemas"]["GenerationRequest"]["properties"]
            fields["count"]["maximum"] = max_count
            for side in ("width", "height"):
                for option in fields[side].get("anyOf", [fields[side]]):
                    if option.get("type") == "integer":
                        option["maximum"] = min(option.get("maximum", max_side), max_side)
        return app.openapi_schema

    app.openapi = openapi


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as `{"error": message}` (A1111's shape on its routes): input problems as 4xx, never a
    traceback."""

    @app.exception_handler(FaceStudioError)
    async def input_error(request, error: FaceStudioError):
        headers = None
        a1111 = a1111_responses.is_a1111(request.url.path)
        if isinstance(error, UploadError):
            status = error.status
            if error.retry_after is not None:
                headers = {"Retry-After": str(error.retry_after)}
        elif getattr(error, "status", None) is not None:  # the A1111 routes' own (a synchronous job's end)
            status = error.status
        elif isinstance(error, generation.NotFound):
            status = 404
        elif isinstance(error, DamagedEntry):
            status = 409  # it exists, but its files cannot be read: delete it and make it again
        elif isinstance(error, StorageError):
            status = 507  # Insufficient Storage: the data folder is full or read-only
            logger.warning("%s", error)
        elif isinstance(error, (NoFaceError, AmbiguousFaceError, ImageError)) or a1111:
            status = 422  # A1111 answers a request it cannot run with 422
        else:
            status = 400
        return _problem(request, status, str(error), type(error).__name__, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error: RequestValidationError):
        found = error.errors()
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in found]
        message = "; ".join(problems)[:2000] or "invalid request"
        # FastAPI's own list, without the input (which may be a large base64 image)
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in found[:20]]
        return _problem(request, 422, message, "RequestValidationError", detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        return _problem(request, error.status_code, str(error.detail), "HTTPException",
                        getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request, error: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _problem(request, 500, f"internal error: {type(error).__name__} (see the server log)",
                        type(error).__name__)
