"""Identity guidance: face photos -> `Identity` -> K identity tokens for the UNet's decoupled cross-attention.

An `Identity` holds what the recogniser sees in a person's photos: the normalised embedding (who) and the
spatial detail map of each aligned face (FlashFace's face feature maps: shape, marks, details). The projection
is diffusers' `IPAdapterFaceIDPlusImageProjection`: the embedding becomes K tokens, and a perceiver lets them
read the detail tokens. It is saved in the public FaceID-Plus layout, so stock diffusers loads it.

Several photos of one person pool into one identity (embeddings averaged, detail tokens of every photo kept);
several identities mix with weights (Σ βᵢ eᵢ renormalised, detail maps averaged with the same weights).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

from ..errors import ModelFileError
from ..faces.analysis import FaceAnalyzer, select_face
from ..faces.detection import Face
from ..imaging import load_image
from .layout import AdapterConfig, init_ip_layers

#: The FaceID-Plus layout diffusers loads has these fixed (`_convert_ip_adapter_image_proj_to_diffusers`).
NUM_TOKENS, DEPTH, HEAD_DIM = 4, 4, 64


@dataclass(frozen=True)
class Identity:
    """One person, as the recogniser sees them.

    Attributes:
        embedding (`np.ndarray`): `[D]` float32, unit length (zeros for the "no reference" identity).
        detail (`np.ndarray`): `[L, C]` float32 detail tokens, the detail maps of every photo flattened.
        recognizer (`str`): which recogniser made them (for the public adapters: which encoders).
        name (`str`): a label for metadata and messages.
        tokens_per_photo (`int`): detail tokens per photo, when the recogniser alone does not say.
    """

    embedding: np.ndarray = field(repr=False)
    detail: np.ndarray = field(repr=False)
    recognizer: str
    name: str = ""
    tokens_per_photo: int = 0  # detail tokens per photo; 0: the recogniser's (TOKENS_PER_PHOTO)

    @property
    def photo_tokens(self) -> int:
        return self.tokens_per_photo or TOKENS_PER_PHOTO.get(self.recognizer, self.detail.shape[0]) or 1

    @property
    def num_photos(self) -> int:
        return max(1, self.detail.shape[0] // self.photo_tokens)


#: Detail tokens per photo for each recogniser (dlib: its 8x8 map of 128 channels).
TOKENS_PER_PHOTO = {"dlib": 64}


def encode_photos(analyzer: FaceAnalyzer, photos: Sequence[np.ndarray], faces: Sequence[Face | None] | None = None,
                  name: str = "") -> Identity:
    """An `Identity` from one or more photos of one person.

    Args:
        analyzer (`FaceAnalyzer`): detector and a recogniser that gives feature maps (dlib, torch backend).
        photos (`Sequence[np.ndarray]`): RGB `uint8` arrays.
        faces (`Sequence[Face | None]`, *optional*): the face to use in each photo; None picks the one clear
            face (`select_face`), asking when there are several of similar size.
        name (`str`): label used in errors and metadata.
    """
    if not photos:
        raise ValueError("an identity needs at least one photo")
    faces = list(faces) if faces is not None else [None] * len(photos)
    recognizer = analyzer.recognizer
    if not hasattr(recognizer, "embed_crops_with_features"):
        raise ValueError(f"the {recognizer.name!r} recogniser gives no feature maps; facestudio's identity adapter "
                         "needs a recogniser that does (dlib)")
    crops = []
    for i, (photo, face) in enumerate(zip(photos, faces)):
        if face is None:
            face = select_face(analyzer.detect(photo), source=f"{name or 'identity'} photo {i + 1}")
        crops.append(analyzer.align(photo, face, recognizer.template, recognizer.input_size).image)
    embeddings, details = embed_aligned(recognizer, np.stack(crops))
    return pool([Identity(e, d.copy(), recognizer.name, name) for e, d in zip(embeddings, details)], name=name)


def embed_aligned(recognizer, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[N, D]` embeddings and `[N, L, C]` detail tokens (`Identity.detail`'s layout: the `[C, h, w]` feature
    map of each crop as `h * w` tokens) of aligned face crops `[N, S, S, 3]`; training's face cache keeps the
    same, so what the adapter learns from is what inference gives it."""
    embeddings, maps = recognizer.embed_crops_with_features(crops)
    return embeddings, maps.reshape(maps.shape[0], maps.shape[1], -1).transpose(0, 2, 1)


def encode_person(analyzer: FaceAnalyzer, photos: Sequence, face: int | None = None, name: str = "") -> Identity:
    """An `Identity` from photos given as paths, PIL images or RGB arrays, read with `load_image`.

    Args:
        analyzer (`FaceAnalyzer`): as for `encode_photos`.
        photos (`Sequence`): paths, PIL images or RGB `uint8` arrays of one person.
        face (`int`, *optional*): the face to use in every photo (0 is the largest); None picks the one
            clear face and asks (`AmbiguousFaceError`) when there are several of similar size.
        name (`str`): label used in errors and metadata.
    """
    arrays, chosen = photos_and_faces(analyzer, photos, face, name)
    return encode_photos(analyzer, arrays, chosen, name=name)


def photos_and_faces(analyzer: FaceAnalyzer, photos: Sequence, face: int | None = None,
                     name: str = "") -> tuple[list[np.ndarray], list[Face]]:
    """Photos (paths, PIL images or RGB arrays) read with `load_image`, and the face to use in each
    (`select_face`: `face`, or the one clear face)."""
    arrays, chosen = [], []
    for j, photo in enumerate(photos):
        label = str(photo) if isinstance(photo, (str, os.PathLike)) else f"{name or 'identity'} photo {j + 1}"
        array = photo if isinstance(photo, np.ndarray) else np.asarray(load_image(photo, min_side=32, name=label))
        arrays.append(array)
        chosen.append(select_face(analyzer.detect(array), index=face, source=label))
    return arrays, chosen


def pool(identities: Sequence[Identity], name: str | None = None) -> Identity:
    """Several photos of one person as one identity: embeddings averaged and renormalised, detail tokens kept."""
    _same_recognizer(identities)
    embedding = _normalised(np.mean([i.embedding for i in identities], axis=0))
    detail = np.concatenate([i.detail for i in identities], axis=0)
    first = identities[0]
    return Identity(embedding, detail, first.recognizer, first.name if name is None else name, first.tokens_per_photo)


def mix(identities: Sequence[Identity], weights: Sequence[float], name: str = "mix") -> Identity:
    """A blend of several people (FaceStudio sec. 3.4): `Σ βᵢ eᵢ` renormalised, detail maps blended alike.

    Each identity's detail is first averaged over its photos: the maps are of aligned faces, so position p
    is the same part of every face and a weighted average per position is meaningful.
    """
    _same_recognizer(identities)
    if len(weights) != len(identities):
        raise ValueError(f"{len(identities)} identities but {len(weights)} mix weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-6):
        raise ValueError(f"mix weights must be non-negative and sum to 1, got {list(weights)}")
    maps = [i.detail.reshape(-1, i.photo_tokens, i.detail.shape[1]).mean(0) if i.detail.size else i.detail
            for i in identities]
    embedding = _normalised(sum(wi * i.embedding.astype(np.float64) for wi, i in zip(w, identities)))
    detail = sum(wi * m.astype(np.float64) for wi, m in zip(w, maps))
    first = identities[0]
    return Identity(embedding.astype(np.float32), detail.astype(np.float32), first.recognizer, name,
                    first.tokens_per_photo)


def _normalised(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _same_recognizer(identities: Sequence[Identity]) -> None:
    if not identities:
        raise ValueError("no identities given")
    names = {i.recognizer for i in identities}
    if len(names) > 1:
        raise ValueError(f"identities from different recognisers cannot be combined: {sorted(names)}")


@dataclass(frozen=True)
class IdentityAdapterConfig(AdapterConfig):
    """What `facestudio_adapter.json` records for an identity adapter."""

    recognizer: str = "dlib"
    id_embedding_dim: int = 128
    detail_dim: int = 128
    cross_attention_dim: int = 768
    shortcut: bool = True  # FaceID-PlusV2 style: tokens = id tokens + shortcut_scale * perceiver output
    shortcut_scale: float = 1.0
    kind: str = "identity"
    projection: str = "faceid-plus"

    @property
    def kind_name(self) -> str:
        return "facestudio"  # guidance/kinds/own.py

    def check_recognizer(self, recognizer: str, source: str) -> None:
        """Refuse to run with another recogniser than the one the adapter was built for."""
        if self.recognizer != recognizer:
            raise ModelFileError(f"identity adapter {source} was built for the {self.recognizer!r} face recogniser; "
                                 f"this facestudio's recogniser is {recognizer!r}")

    def null_identity(self) -> Identity:
        """The "no reference" input the adapter is trained with when identity is dropped: zeros."""
        tokens = TOKENS_PER_PHOTO.get(self.recognizer, 1)
        return Identity(np.zeros(self.id_embedding_dim, np.float32),
                        np.zeros((tokens, self.detail_dim), np.float32), self.recognizer, "no reference")


def new_projection(config: IdentityAdapterConfig) -> IPAdapterFaceIDPlusImageProjection:
    """A freshly initialised projection with the geometry diffusers' FaceID-Plus loader expects."""
    dim = config.cross_attention_dim
    if dim % HEAD_DIM:
        raise ValueError(f"cross_attention_dim {dim} is not a multiple of the head size {HEAD_DIM}")
    return IPAdapterFaceIDPlusImageProjection(
        embed_dims=dim, output_dims=dim, hidden_dims=config.detail_dim, id_embeddings_dim=config.id_embedding_dim,
        depth=DEPTH, dim_head=HEAD_DIM, heads=dim // HEAD_DIM, num_tokens=NUM_TOKENS,
    )


def new_identity_adapter(unet, config: IdentityAdapterConfig, seed: int = 0) -> dict:
    """An untrained identity adapter for `unet`, as the checkpoint dict `load_ip_adapter` takes.

    The projection is randomly initialised (seeded); the key/value projections start from the UNet's own.
    """
    if config.cross_attention_dim != unet.config.cross_attention_dim:
        raise ValueError(f"adapter cross_attention_dim {config.cross_attention_dim} does not match the UNet's "
                         f"{unet.config.cross_attention_dim}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = new_projection(config)
    return {"image_proj": projection_to_checkpoint(projection), "ip_adapter": init_ip_layers(unet)}


def projection_to_checkpoint(projection: IPAdapterFaceIDPlusImageProjection) -> dict[str, torch.Tensor]:
    """The projection's weights in the original FaceID-Plus key names (the inverse of diffusers' conversion)."""
    out = {}
    for key, value in projection.state_dict().items():
        value = value.detach().float().cpu()
        if key.startswith("proj.net.0.proj."):
            out["proj.0." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("proj.net.2."):
            out["proj.2." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out[key] = value
        elif key.startswith(("proj_in.", "proj_out.", "norm_out.")):
            out["perceiver_resampler." + key] = value
        else:  # layers.{l}.<part>
            _, layer, part = key.split(".", 2)
            prefix = f"perceiver_resampler.layers.{layer}."
            renamed = {
                "ln0.weight": "0.norm1.weight", "ln0.bias": "0.norm1.bias",
                "ln1.weight": "0.norm2.weight", "ln1.bias": "0.norm2.bias",
                "attn.to_q.weight": "0.to_q.weight", "attn.to_out.0.weight": "0.to_out.weight",
                "ff.0.weight": "1.0.weight", "ff.0.bias": "1.0.bias",
                "ff.1.net.0.proj.weight": "1.1.weight", "ff.1.net.2.weight": "1.3.weight",
            }
            if part == "attn.to_k.weight":  # the original stores keys and values as one matrix
                value_weight = projection.state_dict()[f"layers.{layer}.attn.to_v.weight"].detach().float().cpu()
                out[prefix + "0.to_kv.weight"] = torch.cat([value, value_weight])
            elif part == "attn.to_v.weight":
                continue
            elif part in renamed:
                out[prefix + renamed[part]] = value
            else:
                raise ValueError(f"unexpected projection weight {key!r}")
    return out


#: FaceID-Plus projections read `clip_embeds` / `shortcut` from module attributes; set and use them under a
#: lock, restored at once, so that concurrent calls never see each other's values.
_PROJECTION_LOCK = threading.Lock()


def identity_tokens(projection: IPAdapterFaceIDPlusImageProjection, identity: Identity,
                    config: IdentityAdapterConfig) -> torch.Tensor:
    """The `[NUM_TOKENS, D]` tokens of one identity."""
    if identity.recognizer != config.recognizer:
        raise ValueError(f"identity {identity.name!r} was encoded with the {identity.recognizer!r} recogniser; "
                         f"the adapter needs {config.recognizer!r}")
    return faceid_plus_tokens(projection, identity.embedding, identity.detail, config.shortcut, config.shortcut_scale)


def faceid_plus_tokens(projection: IPAdapterFaceIDPlusImageProjection, embedding: np.ndarray, detail: np.ndarray,
                       shortcut: bool, shortcut_scale: float = 1.0) -> torch.Tensor:
    """`[T, D]` tokens of a FaceID-Plus projection: `embedding` `[E]` as the id input, `detail` `[L, C]` as the
    `clip_embeds` its perceiver reads; `shortcut` adds the id tokens to the output (PlusV2)."""
    embedding = torch.from_numpy(np.asarray(embedding, np.float32))[None]
    detail = torch.from_numpy(np.asarray(detail, np.float32))[None]
    return batched_faceid_plus_tokens(projection, embedding, detail, shortcut, shortcut_scale)[0]


def batched_faceid_plus_tokens(projection: IPAdapterFaceIDPlusImageProjection, embeddings: torch.Tensor,
                               detail: torch.Tensor, shortcut: bool, shortcut_scale: float = 1.0) -> torch.Tensor:
    """`[B, T, D]` tokens of `[B, E]` embeddings and `[B, L, C]` detail tokens (`faceid_plus_tokens` for a
    batch, with gradients when the caller allows them); the inputs move to the projection's device and dtype."""
    param = next(projection.parameters())
    embeddings = embeddings.to(param.device, param.dtype)
    detail = detail[:, None].to(param.device, param.dtype)
    with _PROJECTION_LOCK:
        saved = projection.clip_embeds, projection.shortcut, projection.shortcut_scale
        try:
            projection.clip_embeds, projection.shortcut, projection.shortcut_scale = detail, shortcut, shortcut_scale
            return projection(embeddings)
        finally:
            projection.clip_embeds, projection.shortcut, projection.shortcut_scale = saved
