"""Request and response bodies of the HTTP API (`/v1`), as pydantic models: they are the OpenAPI schema.

Ranges here are what any server accepts; the limits of one server (largest side, images per job) are checked
when a job is submitted, against the app's settings.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..regions import CHOICES
from ..request import DEFAULT_TEXT_SCALE, MAX_SIDE
from ..sampling.schedulers import SCHEDULERS
from .storage import ID_PATTERN

Id = Annotated[str, Field(pattern=ID_PATTERN, description="an id the server gave")]
Scale = Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)]
Coordinate = Annotated[float, Field(ge=0, le=8192, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentityPlacement(_Strict):
    """One person in a generation: a stored identity, where it goes and how strongly it acts."""

    id: Id
    region: Optional[tuple[Coordinate, Coordinate, Coordinate, Coordinate]] = Field(
        None, description="box x0,y0,x1,y1 in output pixels; default: the whole image for one person, "
                          "else left-to-right strips (or the scene image's faces)")
    strength: float = Field(1.0, ge=0, le=5, allow_inf_nan=False, description="0 turns the identity off")


class GenerationRequest(_Strict):
    """A generation job. Identities come from `POST /v1/identities`, style and scene images from `POST /v1/images`."""

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: Optional[str] = Field(None, max_length=2000,
                                           description="what to avoid; default: the preset's (\"\" for none)")
    identities: list[IdentityPlacement] = Field(default_factory=list, max_length=4)
    mix: Optional[list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]] = Field(
        None, max_length=4, description="blend all identities into one face with these weights (sum 1)")
    style_image: Optional[Id] = Field(None, description="an uploaded image whose look to follow")
    style_strength: float = Field(1.0, ge=0, le=5, allow_inf_nan=False)
    scene_image: Optional[Id] = Field(None, description="an uploaded image whose faces become the identities")
    scene_faces: Optional[list[Annotated[int, Field(ge=0, le=64)]]] = Field(
        None, max_length=4, description="which scene faces (0 is the largest) get identity 1, 2, ...")
    regions: Optional[Literal[tuple(CHOICES)]] = Field(
        None, description="what places every person: 'split' (strips left to right), 'segment' (the people of "
                          "the scene or style image by selfie segmentation, split by nearest face); default "
                          "'auto': the identities' own regions, the scene's faces, the style image's people or "
                          "strips")
    text_guidance_scale: Optional[Scale] = Field(
        None, description=f"default: {DEFAULT_TEXT_SCALE}, or the loaded speed model's (1: no unconditional row)")
    reference_guidance_scale: Optional[Scale] = Field(None, description="default: text_guidance_scale")
    reference_guidance_start: Optional[float] = Field(
        None, ge=0, le=1000, allow_inf_nan=False,
        description="FlashFace's late reference guidance: reference_guidance_scale acts only at timesteps <= this "
                    "(600 in FlashFace); default: at every step")
    steps: Optional[int] = Field(None, ge=1, le=200, description="denoising steps; default: the server's")
    seed: Optional[int] = Field(None, ge=0, le=2**53 - 1, description="image i uses seed+i; default: random")
    width: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    height: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    count: int = Field(1, ge=1, description="how many images; at most this server's `max_count` (/v1/models), "
                                            "which the served /openapi.json states as the maximum")
    scheduler: Optional[Literal[tuple(SCHEDULERS)]] = Field(
        None, description="the sampler by name; default: euler-a (Euler ancestral), or the speed model's")
    speed: Optional[str] = Field(None, max_length=64,
                                 description="the speed model the server loaded (`speed` of /v1/models); the "
                                             "server's speed model is used whether named or not")
    decoder: Optional[Literal["full", "tiny"]] = Field(
        None, description="'tiny': TAESD decodes the images (fast, a little less detail; needs `preview` in "
                          "/v1/models); default: the server's")
    shortcut_scale: Optional[float] = Field(None, ge=0, le=5, allow_inf_nan=False,
                                            description="FaceID-PlusV2's weight of the CLIP face detail; default: "
                                                        "the adapter's")


class Problem(BaseModel):
    """Every error: one message naming the problem."""

    error: str


class FaceInfo(BaseModel):
    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]]


class PhotoInfo(BaseModel):
    name: str
    width: int
    height: int
    faces: list[FaceInfo]
    used: int = Field(description="index of the face used (0 is the largest)")


class IdentityInfo(BaseModel):
    id: str
    name: str
    recognizer: str
    created: float
    photos: list[PhotoInfo]
    embedding: list[float] = Field(description="the stored identity embedding (unit length)")
    thumbnail: Optional[str] = Field(None, description="URL of a small picture of the face (none: stored before "
                                                       "thumbnails)")


class IdentityChange(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="the identity's new name")


class DamagedInfo(BaseModel):
    id: str
    error: str = Field(description="what is wrong with its files, and what to do")


class IdentityList(BaseModel):
    identities: list[IdentityInfo]
    damaged: list[DamagedInfo] = Field(description="stored identities whose files cannot be read, left out above")


class ImageInfo(BaseModel):
    id: str
    name: str
    width: int
    height: int
    faces: list[FaceInfo]


class ResultImage(BaseModel):
    name: str
    url: str
    seed: int


class JobStatus(BaseModel):
    id: str
    state: str = Field(description="queued, running, done, failed, cancelled or timed_out")
    step: int = Field(description="denoising steps done, over all images")
    total_steps: int
    queue_position: Optional[int] = Field(None, description="jobs waiting before this one (0: next)")
    images: list[ResultImage]
    error: Optional[str] = None
    interrupted: bool = Field(False, description="the server stopped while this job waited or ran; the images "
                                                 "listed are those made before")
    request: dict
    seed: int
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None


class ModelInfo(BaseModel):
    base_model: str
    adapters: list[dict]
    device: str
    dtype: str
    scheduler: str
    workers: int
    queue_size: int
    max_side: int
    default_side: int = Field(description="the pipeline's output side when a request sets no size and no scene "
                                          "(512 for SD 1.5, 1024 for SDXL)")
    max_count: int
    default_steps: int
    regions: list[str] = Field(description="the `regions` a request may name on this server ('segment' only with "
                                           "the segment extra installed)")
    schedulers: list[str] = Field(description="the samplers a request may name")
    speed: Optional[str] = Field(None, description="the loaded few-step speed model, if any")
    negative_prompt: Optional[str] = Field(None, description="the negative prompt used when a request gives none")
    shortcut_scale: Optional[float] = Field(None, description="the identity adapter's PlusV2 shortcut scale "
                                                              "(None: its adapter has no shortcut)")
    preview: bool = Field(False, description="whether jobs send a preview image per step (tiny decoder loaded)")
    version: str


class QueueInfo(BaseModel):
    waiting: int
    running: int
    size: int = Field(description="jobs allowed to wait")
    workers: int
    max_waiting_seen: int = Field(description="the most jobs that ever waited at once")
