"""A1111's answers: base64 images with `parameters` and `info`, the progress of its jobs, its error shape."""

from __future__ import annotations

import base64
import io
import json
import time

from PIL import Image

from ... import __version__
from ...labels.parameters import SAMPLERS, _model_name
from ..guard import A1111_PREFIXES
from ..jobs import RUNNING


def is_a1111(path: str) -> bool:
    return path.startswith(A1111_PREFIXES)


def error_body(kind: str, message: str, detail=None) -> dict:
    """A1111's error shape: `error` the kind, `detail` what is wrong (naming the field), `errors` the message."""
    return {"error": kind, "detail": message if detail is None else detail, "body": "", "errors": message}


def model_title(base_model: str) -> str:
    """The base model as A1111 lists a checkpoint (its file or folder name, a hub id as is)."""
    return _model_name(base_model) or str(base_model)


def txt2img_answer(job, request, report, base_model: str) -> dict:
    """`POST /sdapi/v1/txt2img`'s answer: the job's images (when `send_images`), the request as received, and
    `info`, A1111's generation info as a JSON string with facestudio's report in it."""
    settings = job.plan.settings
    count, seed = len(job.results), settings.seed
    infotexts = [Image.open(io.BytesIO(png)).info.get("parameters", "") for png in job.results]
    sampler, schedule = SAMPLERS[settings.scheduler]
    prompt, negative = settings.prompt, settings.negative_prompt or ""
    info = {
        "prompt": prompt, "all_prompts": [prompt] * count, "negative_prompt": negative,
        "all_negative_prompts": [negative] * count, "seed": seed, "all_seeds": [seed + i for i in range(count)],
        "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0, "width": settings.width,
        "height": settings.height, "sampler_name": sampler, "cfg_scale": settings.text_guidance_scale,
        "steps": settings.num_inference_steps, "batch_size": request.batch_size, "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": model_title(base_model), "sd_model_hash": None,
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": None, "extra_generation_params": {"Schedule type": schedule},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": f"facestudio {__version__}",
        "facestudio": {**report.as_dict(), "interrupted": job.state != "done", "images_made": count,
                       "images_asked": settings.count,
                       "identities": [{"name": p.name, "strength": p.strength, **info.get("metadata", {})}
                                      for p, info in zip(job.plan.people, job.plan.identity_info)]},
    }
    images = [base64.b64encode(png).decode() for png in job.results] if request.send_images else []
    return {"images": images, "parameters": request.model_dump(mode="json"), "info": json.dumps(info)}


def progress(jobs: list, skip_image: bool = False) -> dict:
    """`GET /sdapi/v1/progress` over the A1111 jobs in flight (oldest first): the running one, else the next.
    `current_image` is the latest step's preview (base64 JPEG) when the server loaded the tiny decoder."""
    idle = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
            "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if not jobs:
        return {"progress": 0.0, "eta_relative": 0.0, "state": idle, "current_image": None, "textinfo": None}
    job = next((j for j in jobs if j.state == RUNNING), jobs[0])
    steps, done = job.plan.steps, job.step
    state = {**idle, "interrupted": job.cancel_requested.is_set(), "job": f"txt2img {job.id}",
             "job_count": job.plan.count, "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
             "job_no": min(done // steps, job.plan.count - 1), "sampling_step": done % steps if done < job.total_steps
             else steps, "sampling_steps": steps}
    fraction = min(1.0, 0.01 + done / job.total_steps)  # A1111 starts at 0.01: a client divides by it
    elapsed = 0.0 if job.started is None else time.time() - job.started
    eta = elapsed / fraction - elapsed if job.started is not None else 0.0
    waiting = sum(1 for j in jobs if j.started is None)
    text = "waiting in the job queue" if job.started is None else \
        f"{waiting} more A1111 job(s) waiting" if waiting else None
    # a job that ended but is not answered yet still reads as where it stopped, never as back at the start
    return {"progress": 0.01 if job.started is None else fraction, "eta_relative": max(0.0, eta), "state": state,
            "current_image": None if skip_image or job.preview is None else job.preview.partition(",")[2],
            "textinfo": text, "current_task": job.id}
