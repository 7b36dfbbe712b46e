"""Bodies of the AUTOMATIC1111-compatible routes, as pydantic models (they are the OpenAPI schema of `/sdapi`).

A1111 takes a request with many fields and lets unknown ones pass; so do these models (`extra="allow"`): the
fields facestudio honours are typed and range-checked here (422 naming the field), every other field is accepted
and reported in the answer's `info` (`facestudio.ignored`) when it would have changed A1111's result.
facestudio's own settings travel in one extra object, `facestudio` (`FaceStudioExtras`), which A1111 itself would
ignore, so one request can be sent to both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ...regions import CHOICES
from ...request import MAX_SIDE

Scale = Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)]
#: A base64 image as A1111 takes it (raw, or a `data:image/...;base64,` URL).
Base64Image = Annotated[str, Field(description="a base64 image (raw, or a data: URL); never a URL or a path")]


class FaceStudioExtras(BaseModel):
    """facestudio's settings A1111 has no field for (`"facestudio": {...}` in a txt2img request)."""

    model_config = ConfigDict(extra="forbid")

    reference_scale: Optional[Scale] = Field(
        None, description="the reference guidance scale g_ref (FlashFace), apart from the text scale cfg_scale; "
                          "default: cfg_scale")
    mix: Optional[list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]] = Field(
        None, max_length=4, description="blend the identity units into one face with these weights (sum 1)")
    regions: Optional[Literal[tuple(CHOICES)]] = Field(
        None, description="what places the people when units give no effective_region_mask: 'split' (strips left "
                          "to right), 'segment' (the scene's people by selfie segmentation); default 'auto'")
    scene_image: Optional[Base64Image] = Field(
        None, description="an image whose faces become the identity units' people (the rest of it is kept)")
    scene_faces: Optional[list[Annotated[int, Field(ge=0, le=64)]]] = Field(
        None, max_length=4, description="which scene faces (0 is the largest) get identity unit 1, 2, ...")
    names: Optional[list[Annotated[str, Field(max_length=100)]]] = Field(
        None, max_length=4, description="a name per identity unit, for the images' metadata (default 'ControlNet N')")
    faces: Optional[list[Optional[Annotated[int, Field(ge=0, le=64)]]]] = Field(
        None, max_length=4, description="which face of each identity unit's photos to use (0 is the largest; "
                                        "default: the one clear face)")


class ScriptArgs(BaseModel):
    model_config = ConfigDict(extra="allow")

    args: list[Any] = Field(default_factory=list)


class Txt2ImgRequest(BaseModel):
    """`POST /sdapi/v1/txt2img`: A1111's fields that facestudio honours; any other field is accepted."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", max_length=2000)
    negative_prompt: Optional[str] = Field("", max_length=2000)
    seed: int = Field(-1, ge=-1, le=2**53 - 1, description="-1: random; image i uses seed + i")
    sampler_name: Optional[str] = Field(None, max_length=100, description="GET /sdapi/v1/samplers")
    sampler_index: Optional[str] = Field(None, max_length=100, description="the older name of sampler_name")
    scheduler: Optional[str] = Field(None, max_length=100, description="schedule type: GET /sdapi/v1/schedulers")
    batch_size: int = Field(1, ge=1, le=16)
    n_iter: int = Field(1, ge=1, le=16)
    steps: Optional[int] = Field(None, ge=1, le=200, description="default: the server's")
    cfg_scale: Scale = 7.0
    width: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's side")
    height: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's side")
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, ScriptArgs] = Field(
        default_factory=dict, description="'controlnet' (any case): IP-Adapter units; no other script is served")
    facestudio: Optional[FaceStudioExtras] = None


class ControlNetUnit(BaseModel):
    """One unit of `alwayson_scripts.controlnet.args` as the sd-webui-controlnet extension reads it."""

    model_config = ConfigDict(extra="allow")

    enabled: bool = Field(False, description="the extension's default: a unit without it does nothing")
    module: str = Field("none", max_length=200)
    model: str = Field("None", max_length=200)
    weight: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    image: Any = Field(None, description="base64, {'image', 'mask'}, [image, mask] or a list of {'image', 'mask'} "
                                         "(several photos of one person)")
    effective_region_mask: Optional[Base64Image] = Field(
        None, description="where the unit acts: white inside (the first channel is read), the output's shape")


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs with their settings and AI-generated label embedded")
    parameters: dict = Field(description="the request as received")
    info: str = Field(description="JSON: A1111's generation info, plus 'facestudio' (honoured and ignored fields)")


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: Optional[str] = None
    textinfo: Optional[str] = None
    current_task: Optional[str] = None


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: float
    need_inner_model: bool


class A1111Problem(BaseModel):
    """Every error of these routes, in A1111's shape."""

    error: str = Field(description="the kind of error")
    detail: Any = Field(description="what is wrong, naming the field (for 422 from the schema: the list of "
                                    "{loc, msg, type} as FastAPI gives it)")
    body: Any = ""
    errors: str = Field(description="the message, naming the field")
