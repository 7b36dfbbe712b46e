"""PuLID's ID encoder, the entry point: photos of one person -> ID tokens and the "no identity" tokens.

Per photo, as the reference's `get_id_embedding` does (ToTheBeginning/PuLID `pulid/pipeline*.py`):

1. the face's raw antelopev2 embedding (512) from the 112 px ArcFace crop (`antelope.py`);
2. the face aligned onto FFHQ's 512 px template (facexlib's `FaceRestoreHelper`; grey outside the photo).
   The transform is facexlib's (its LMEDS fit of five points is the least-squares similarity, the same
   matrix to 1e-6 on the test photos); where the face shrinks, facestudio's warp is anti-aliased where
   facexlib's is plain bilinear (PuLID's demos first shrink photos to 1024 px with Lanczos, which also
   anti-aliases): a mean difference of 1.2-1.4 grey levels on the test photos that shrink, none on the others;
3. BiSeNet's labels of it, background classes white, the rest grey (`parsing.py`);
4. resized to 336 (bicubic, without antialiasing as PuLID's pinned torchvision 0.15 resized tensors) and
   normalised with CLIP's mean and std; EVA-CLIP gives the 768-d embedding (then L2-normalised) and five
   hidden states (`eva.py`);
5. `id_cond` = raw embedding ++ normalised EVA embedding (1280); the ID encoder reads `id_cond` and the
   hidden states (`idformer.py`).

Several photos of one person (PuLID's demos take a main photo and up to three more, `MAX_PHOTOS`):

* v1.1 and FLUX: all photos through the ID former together (their `id_cond` stacked, their hidden states
  side by side): 32 tokens whatever the number of photos (`app_v1_1.py`);
* v1: each photo encoded alone, the main photo's 10 tokens followed by the first 5 (the `id_cond` tokens) of
  each further photo, or all 10 with `id_mix` (`app.py`'s "ID Mix", for blending two people).

"No identity" (`uncond`) is the encoder on all-zero input, one photo's worth (v1: laid out as the photos'
tokens are). The SDXL pipelines feed it with the negative prompt; FLUX computes it for true CFG only.

Photos arrive as RGB `uint8` arrays with the facestudio `Face` to use in each; `features_from_aligned` takes
the 512 px aligned faces and raw embeddings directly (what the oracle test compares with the reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...faces.alignment import align_face
from ...faces.detection import Face
from . import checkpoints, eva, parsing
from .antelope import AntelopeRecognizer
from .idformer import IDFormerConfig, MLPEncoderConfig

#: PuLID's demos: one main photo and up to three auxiliary ones.
MAX_PHOTOS = 4
#: The aligned face PuLID parses (facexlib's `face_size=512` on the FFHQ template).
ALIGN_SIZE = 512
#: facexlib's `borderValue=(135, 133, 132)` (BGR) outside the photo, in RGB.
ALIGN_BORDER = (132, 133, 135)
#: Width of the ArcFace part of `id_cond`.
ARCFACE_DIM = 512


@dataclass(frozen=True)
class PhotoFeatures:
    """What PuLID's encoders read from one photo.

    Attributes:
        id_cond (`torch.Tensor`): `[1280]`: the raw antelopev2 embedding, then the unit EVA-CLIP embedding.
        vit_hidden (`tuple[torch.Tensor, ...]`): five `[577, 1024]` EVA-CLIP hidden states, class token first.
        face_image (`torch.Tensor`): `[3, 512, 512]` in [0, 1], the grey-on-white face EVA-CLIP saw (for
            showing the user what was read, like the demos' debug images).
    """

    id_cond: torch.Tensor
    vit_hidden: tuple[torch.Tensor, ...]
    face_image: torch.Tensor


@dataclass(frozen=True)
class IDTokens:
    """One person's ID tokens for the ID attention.

    Attributes:
        cond (`torch.Tensor`): `[1, T, 2048]` (v1.1 / FLUX: T = 32; v1: 10, plus 5 or 10 per further photo).
        uncond (`torch.Tensor`): `[1, T', 2048]`, the "no identity" tokens (fed with the negative prompt).
        num_photos (`int`): photos read.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    num_photos: int


class PuLIDEncoder:
    """Photos -> PuLID ID tokens, for one PuLID version.

    Holds models only (no per-call state): one encoder serves several threads.

    Args:
        pulid (`str` or `PuLIDVersion`): `"v1"`, `"v1.1"`, `"flux-v0.9.0"` or `"flux-v0.9.1"`.
        id_encoder (`torch.nn.Module`): the version's ID encoder (`checkpoints.load_id_encoder`).
        tower (`EvaTower`): EVA-CLIP's vision tower.
        parser (`FaceParser`): BiSeNet.
        recognizer (`AntelopeRecognizer`, *optional*): antelopev2; needed only to encode photos (not for
            `features_from_aligned` or `null_tokens`).

    Example:
        ```py
        >>> from facestudio.guidance.pulid.encoder import PuLIDEncoder
        >>> encoder = PuLIDEncoder.from_files("v1.1", "pulid_v1.1.safetensors", "EVA02_CLIP_L_336_psz14_s6B.pt",
        ...                                   "parsing_bisenet.pth", "models/antelopev2")
        >>> tokens = encoder.encode([photo], [face])
        >>> tokens.cond.shape, tokens.uncond.shape
        (torch.Size([1, 32, 2048]), torch.Size([1, 32, 2048]))
        ```
    """

    def __init__(self, pulid, id_encoder: torch.nn.Module, tower: eva.EvaTower, parser: parsing.FaceParser,
                 recognizer: AntelopeRecognizer | None = None):
        self.version = checkpoints.version(pulid)
        self.id_encoder = id_encoder
        self.tower = tower
        self.parser = parser
        self.recognizer = recognizer
        config = id_encoder.config
        expected_id = ARCFACE_DIM + tower.config.embed_dim
        if config.id_dim != expected_id or config.vit_dim != tower.config.dim:
            raise ValueError(f"the ID encoder reads id_cond of {config.id_dim} and hidden states of {config.vit_dim}; "
                             f"this EVA-CLIP gives {expected_id} and {tower.config.dim}")
        if isinstance(config, MLPEncoderConfig) == self.version.joint_photos:
            raise ValueError(f"PuLID {self.version.name} has a {type(self.version.encoder).__name__} encoder, "
                             f"got {type(id_encoder).__name__}")

    @classmethod
    def from_files(cls, pulid, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                   eva_clip: str | os.PathLike | Mapping[str, torch.Tensor],
                   bisenet: str | os.PathLike | Mapping[str, torch.Tensor],
                   antelopev2: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, sizes: str = "published",
                   width: int | None = None) -> "PuLIDEncoder":
        """An encoder from the published files, every key of each checked at load.

        Args:
            pulid: the version.
            checkpoint: the PuLID file (`pulid_v1.bin`, ...) or its encoder state dict (prefix removed, as
                `checkpoints.split_checkpoint` gives it).
            eva_clip: `EVA02_CLIP_L_336_psz14_s6B.pt` or its state dict.
            bisenet: `parsing_bisenet.pth` or its state dict.
            antelopev2: `glintr100.onnx` or its folder (None: no photos, only `features_from_aligned`).
            device, dtype: where the torch models run (PuLID runs SDXL's encoder in float32, FLUX's in bf16).
            sizes, width: the networks' widths (`encoder_sizes`): `"published"`, or `"tiny"` (test checkpoints)
                with ID tokens `width` wide.

        Raises:
            ModelFileError: a missing, unreadable or mis-shaped file, naming it and its keys.
        """
        v = checkpoints.version(pulid)
        if isinstance(checkpoint, (str, os.PathLike)):
            state, _ = checkpoints.split_checkpoint(checkpoints.read_tensors(checkpoint), v, str(checkpoint))
            source = str(checkpoint)
        else:
            state, source = checkpoint, f"PuLID {v.name} encoder state"
        id_config, eva_config = encoder_sizes(v.name, sizes, width)
        id_encoder = checkpoints.load_id_encoder(state, v, id_config, source=source)
        tower = eva.load_tower(eva_clip, eva_config)
        parser = parsing.load_parser(bisenet)
        recognizer = AntelopeRecognizer(antelopev2) if antelopev2 is not None else None
        return cls(v, id_encoder, tower, parser, recognizer).to(device, dtype)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "PuLIDEncoder":
        """Move the torch models (in place); returns self. BiSeNet stays in float32 (PuLID-FLUX casts only
        EVA-CLIP and the ID former to bf16): its labels are an argmax, where rounding would move borders."""
        for module in (self.id_encoder, self.tower.model):
            module.to(device=device, dtype=dtype)
        self.parser.model.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return self.tower.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.dtype

    # ------------------------------------------------------------------ per photo

    def aligned_face(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The `[512, 512, 3]` RGB `uint8` FFHQ-aligned face PuLID parses."""
        return align_face(image, face.landmark_array(), "ffhq", ALIGN_SIZE, border=ALIGN_BORDER).image

    def embedding(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The face's raw antelopev2 embedding `[512]` (not normalised, as PuLID reads it)."""
        if self.recognizer is None:
            raise ValueError("this PuLID encoder has no antelopev2 recogniser; give its glintr100.onnx")
        crop = align_face(image, face.landmark_array(), self.recognizer.template, self.recognizer.input_size).image
        return self.recognizer.raw_embeddings(crop[None])[0]

    def photo_features(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> list[PhotoFeatures]:
        """`PhotoFeatures` of each photo (RGB `uint8` `[H, W, 3]`) with the face to use in it."""
        if len(images) != len(faces):
            raise ValueError(f"{len(images)} photos but {len(faces)} faces")
        aligned = np.stack([self.aligned_face(np.asarray(im), f) for im, f in zip(images, faces)])
        embeddings = np.stack([self.embedding(np.asarray(im), f) for im, f in zip(images, faces)])
        return self.features_from_aligned(aligned, embeddings)

    def features_from_aligned(self, aligned: np.ndarray, embeddings: np.ndarray) -> list[PhotoFeatures]:
        """`PhotoFeatures` of 512 px FFHQ-aligned faces (RGB `uint8` `[N, 512, 512, 3]`) and their raw antelopev2
        embeddings (`[N, 512]`), computed as one batch."""
        aligned, embeddings = np.asarray(aligned), np.asarray(embeddings, np.float32)
        if aligned.ndim != 4 or aligned.shape[1:] != (ALIGN_SIZE, ALIGN_SIZE, 3) or aligned.dtype != np.uint8:
            raise ValueError(f"aligned faces must be uint8 [N, {ALIGN_SIZE}, {ALIGN_SIZE}, 3], got "
                             f"{aligned.dtype} {list(aligned.shape)}")
        if embeddings.shape != (len(aligned), ARCFACE_DIM):
            raise ValueError(f"embeddings must be [{len(aligned)}, {ARCFACE_DIM}], got {list(embeddings.shape)}")
        images = torch.from_numpy(aligned).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        face_images = parsing.whiten_background(images, self.parser.labels(images))
        size = self.tower.config.image_size
        pixels = eva.normalise(F.interpolate(face_images, size=(size, size), mode="bicubic", align_corners=False))
        clip_embedding, hidden = self.tower(pixels)
        clip_embedding = clip_embedding / clip_embedding.norm(dim=-1, keepdim=True)
        raw = torch.from_numpy(embeddings).to(self.device, clip_embedding.dtype)
        id_cond = torch.cat((raw, clip_embedding), dim=-1)
        return [PhotoFeatures(id_cond[i], tuple(h[i] for h in hidden), face_images[i]) for i in range(len(aligned))]

    # ------------------------------------------------------------------ tokens

    def id_tokens(self, photos: Sequence[PhotoFeatures], id_mix: bool = False) -> torch.Tensor:
        """`[1, T, 2048]` ID tokens of one person's photos (see the module docstring for how they combine)."""
        self._check_photos(len(photos), id_mix)
        with torch.no_grad():
            if self.version.joint_photos:
                id_cond = torch.stack([p.id_cond for p in photos])[None].to(self.dtype)
                hidden = [torch.cat([p.vit_hidden[level] for p in photos])[None].to(self.dtype)
                          for level in range(len(photos[0].vit_hidden))]
                return self.id_encoder(id_cond if len(photos) > 1 else id_cond[:, 0], hidden)
            per_photo = [self.id_encoder(p.id_cond[None].to(self.dtype), [h[None].to(self.dtype) for h in p.vit_hidden])
                         for p in photos]
            return self._side_by_side(per_photo, id_mix)

    def null_tokens(self, num_photos: int = 1, id_mix: bool = False) -> torch.Tensor:
        """The "no identity" tokens as the reference computes them: the encoder on zeros (one photo's worth;
        for v1 laid out like `num_photos` photos' tokens)."""
        self._check_photos(num_photos, id_mix)
        c, t = self.id_encoder.config, self.tower.config
        zeros_cond = torch.zeros(1, c.id_dim, device=self.device, dtype=self.dtype)
        zeros_hidden = [torch.zeros(1, t.tokens, c.vit_dim, device=self.device, dtype=self.dtype)
                        for _ in range(c.num_vit_layers)]
        with torch.no_grad():
            uncond = self.id_encoder(zeros_cond, zeros_hidden)
        return uncond if self.version.joint_photos else self._side_by_side([uncond] * num_photos, id_mix)

    def encode(self, images: Sequence[np.ndarray], faces: Sequence[Face], id_mix: bool = False) -> IDTokens:
        """`IDTokens` of one person from photos (RGB `uint8` arrays) and the face to use in each."""
        self._check_photos(len(images), id_mix)
        photos = self.photo_features(images, faces)
        return IDTokens(self.id_tokens(photos, id_mix), self.null_tokens(len(photos), id_mix), len(photos))

    def _side_by_side(self, per_photo: list[torch.Tensor], id_mix: bool) -> torch.Tensor:
        """v1: the first photo's tokens, then each further photo's (all with `id_mix`, else its `id_cond` ones)."""
        keep = self.id_encoder.config.tokens_per_photo if id_mix else self.id_encoder.config.num_tokens
        return torch.cat([per_photo[0]] + [t[:, :keep] for t in per_photo[1:]], dim=1)

    def _check_photos(self, count: int, id_mix: bool) -> None:
        if not 1 <= count <= MAX_PHOTOS:
            raise ValueError(f"PuLID reads 1 to {MAX_PHOTOS} photos of a person, got {count}")
        if id_mix and self.version.joint_photos:
            raise ValueError(f"id_mix is PuLID v1's option; {self.version.name} reads several photos together")


def encoder_sizes(pulid, sizes: str = "published", width: int | None = None):
    """`(ID encoder config, EVA-CLIP config)` of a version: its published widths, or at `sizes="tiny"` the test
    widths of `tiny_encoder_config` with ID tokens `width` wide (the UNet's or transformer's)."""
    if sizes == "published":
        return checkpoints.version(pulid).encoder, eva.EvaConfig()
    config = tiny_encoder_config(pulid)
    if width is not None:
        config = replace(config, **{"output_dim" if isinstance(config, IDFormerConfig) else "context_dim": width})
    return config, eva.TINY_EVA


def tiny_encoder_config(pulid, tower: eva.EvaConfig = eva.TINY_EVA):
    """The version's encoder config at tiny widths, fitting `tower` (for tests: built in code, nothing read)."""
    v = checkpoints.version(pulid)
    widths = dict(id_dim=ARCFACE_DIM + tower.embed_dim, vit_dim=tower.dim, hidden_dim=32)
    if v.joint_photos:
        return IDFormerConfig(dim=32, depth=10, dim_head=8, heads=4, output_dim=64, **widths)
    return MLPEncoderConfig(context_dim=64, **widths)


def tiny_pulid_encoder(pulid, seed: int = 0, recognizer: AntelopeRecognizer | None = None) -> PuLIDEncoder:
    """A PuLID encoder of the version's architecture at tiny widths with seeded random weights (tests).

    Every parameter and BatchNorm statistic is drawn, so that no layer is an identity by initialisation.
    """
    from .idformer import build_id_encoder

    torch.manual_seed(seed)
    id_encoder = build_id_encoder(tiny_encoder_config(pulid)).eval().requires_grad_(False)
    tower = eva.EvaTower(eva.build_tower(eva.TINY_EVA), eva.TINY_EVA)
    parser = parsing.FaceParser(parsing.BiSeNet().eval().requires_grad_(False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (id_encoder, tower.model, parser.model):
            for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
                if tensor.is_floating_point() and "rope" not in name:
                    noise = torch.randn(tensor.shape, generator=generator) * 0.1
                    tensor.copy_(1 + noise.abs() if name.endswith("running_var") else
                                 1 + noise if tensor.ndim == 1 and name.endswith("weight") else noise)
    return PuLIDEncoder(pulid, id_encoder, tower, parser, recognizer)
