"""The AUTOMATIC1111-compatible routes, on the app's own queue, limits, token and upload checks.

    POST /sdapi/v1/txt2img          a synchronous generation: waits on the job queue, answers the images
    GET  /sdapi/v1/progress         the A1111 jobs in flight (state, step, ETA, the step's preview image)
    POST /sdapi/v1/interrupt        stop the A1111 jobs in flight (their finished images are answered)
    GET  /sdapi/v1/sd-models, samplers, schedulers, options (POST: only sd_model_checkpoint, the loaded model),
         scripts, cmd-flags
    GET  /controlnet/version, model_list, module_list, settings   (as the sd-webui-controlnet extension)

A job of these routes is a `generation.InlinePlan`: it waits in the same `JobQueue` as `/v1` jobs (a full queue
answers 429 with Retry-After), runs with the same pipeline and time limit, and keeps its images in memory for
the answer. If the client goes away first, the job is cancelled: its images could reach no one.
"""

from __future__ import annotations

import asyncio
import functools
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ...errors import FaceStudioError
from ..jobs import CANCELLED, DONE, FAILED, FINISHED, Job, QueueFull
from . import names, responses
from .mapping import plan_txt2img
from .schemas import (A1111Problem, ProgressResponse, SamplerItem, SchedulerItem, SdModel, Txt2ImgRequest,
                      Txt2ImgResponse)

#: Seconds between checks of a waiting synchronous job.
_POLL_S = 0.05
_ERRORS = {status: {"model": A1111Problem} for status in (401, 403, 413, 415, 422, 429, 503)}


class JobFailed(FaceStudioError):
    """A synchronous job ended without its images (its input, or past the server's time limit: 422)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def add_routes(app: FastAPI, *, pipe, queue, upload_pool, limits, base_model: str, max_side: int, max_count: int,
               default_steps: int) -> None:
    """Add the routes to `app`, serving `pipe` through `queue` (the app's) and `upload_pool`."""
    # The A1111 jobs submitted and not yet answered, oldest first; touched only on the event loop (the routes
    # that read it are `async`).
    in_flight: list[Job] = []
    title = responses.model_title(base_model)

    @app.post("/sdapi/v1/txt2img", response_model=Txt2ImgResponse, responses=_ERRORS, tags=["a1111"],
              summary="A1111 txt2img: ControlNet IP-Adapter units as identities; waits for the images")
    async def txt2img(body: Txt2ImgRequest, request: Request):
        work = functools.partial(plan_txt2img, pipe, body, limits, max_side=max_side, max_count=max_count,
                                 default_steps=default_steps)
        plan, report = await upload_pool.run(work)
        job = Job(secrets.token_hex(8), plan, plan.total_steps)
        try:
            queue.submit(job)
        except QueueFull as e:
            return JSONResponse(responses.error_body("QueueFull", str(e)), status_code=429,
                                headers={"Retry-After": str(e.retry_after)})
        except RuntimeError:  # the queue is closed: the server is stopping
            return JSONResponse(responses.error_body("ServerStopping", "the server is stopping"), status_code=503)
        in_flight.append(job)
        try:
            while job.state not in FINISHED:
                if await request.is_disconnected():
                    queue.cancel(job)
                    return JSONResponse(responses.error_body("Disconnected", "the client went away"), 499)
                await asyncio.sleep(_POLL_S)
        finally:
            in_flight.remove(job)
        if job.state == FAILED:
            if not job.input_error:
                raise RuntimeError(f"txt2img job {job.id} failed: {job.error}")  # a bug: 500, logged by the app
            raise JobFailed(job.error, 422)
        if job.state not in (DONE, CANCELLED):  # past the server's time limit: a limit, as the largest side is
            raise JobFailed(f"{job.error} (this server's job time limit); ask for fewer steps or images", 422)
        return responses.txt2img_answer(job, body, report, base_model)

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse, tags=["a1111"],
             summary="Progress of the A1111 jobs in flight")
    async def progress(skip_current_image: bool = False):
        return responses.progress(list(in_flight), skip_current_image)

    @app.post("/sdapi/v1/interrupt", tags=["a1111"], summary="Stop the A1111 jobs in flight (not /v1 jobs)")
    async def interrupt():
        for job in list(in_flight):
            queue.cancel(job)  # an A1111 job's end writes nothing: no disk work on the event loop
        return {}

    @app.post("/sdapi/v1/skip", tags=["a1111"], summary="As interrupt: facestudio makes a job's images in turn")
    async def skip():
        return await interrupt()

    @app.get("/sdapi/v1/sd-models", response_model=list[SdModel], tags=["a1111"], summary="The loaded base model")
    def sd_models():
        return [{"title": title, "model_name": title, "hash": None, "sha256": None, "filename": str(base_model),
                 "config": None}]

    @app.get("/sdapi/v1/samplers", response_model=list[SamplerItem], tags=["a1111"])
    def samplers():
        return names.samplers()

    @app.get("/sdapi/v1/schedulers", response_model=list[SchedulerItem], tags=["a1111"])
    def schedulers():
        return names.schedulers()

    def options_now() -> dict:
        return {"sd_model_checkpoint": title, "sd_checkpoint_hash": None, "samples_format": "png",
                "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "eta_ancestral": 1.0,
                "control_net_unit_count": 4, "facestudio_default_steps": default_steps,
                "facestudio_max_side": max_side, "facestudio_max_images": max_count}

    @app.get("/sdapi/v1/options", tags=["a1111"], summary="The settings A1111 clients read")
    def get_options():
        return options_now()

    @app.post("/sdapi/v1/options", tags=["a1111"], responses=_ERRORS,
              summary="Only sd_model_checkpoint, naming the loaded model, is accepted: nothing else changes")
    def set_options(body: dict):
        checkpoint = body.get("sd_model_checkpoint")
        if checkpoint is not None and checkpoint not in (title, str(base_model)):
            raise FaceStudioError(f"sd_model_checkpoint {str(checkpoint)[:100]!r}: this server has loaded {title!r} "
                                  "only (restart it with another --base-model to change)")
        current = options_now()
        return {"ignored": sorted(k for k, v in body.items() if k != "sd_model_checkpoint" and current.get(k) != v)}

    @app.get("/sdapi/v1/scripts", tags=["a1111"])
    def scripts():
        return {"txt2img": ["controlnet"], "img2img": []}

    @app.get("/sdapi/v1/cmd-flags", tags=["a1111"])
    def cmd_flags():
        return {"api": True, "facestudio": True}

    @app.get("/controlnet/version", tags=["a1111"])
    def controlnet_version():
        return {"version": 3}

    @app.get("/controlnet/model_list", tags=["a1111"], summary="The IP-Adapter models this server serves")
    def controlnet_models(update: bool = True):
        return {"model_list": names.served_models(pipe)}

    @app.get("/controlnet/module_list", tags=["a1111"])
    def controlnet_modules(alias_names: bool = False):
        return {"module_list": list(names.MODULES),
                "module_detail": {m: {"model_free": False, "sliders": []} for m in names.MODULES}}

    @app.get("/controlnet/settings", tags=["a1111"])
    def controlnet_settings():
        return {"control_net_unit_count": 4}

