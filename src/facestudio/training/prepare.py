"""`prepare`: a folder of human photos -> the face cache that training reads.

For every photo (any nesting; .jpg, .jpeg, .png, .webp) the cache keeps one `samples/<id>.npz` with

* `image`: a square crop around the person at the training resolution (RGB `uint8`);
* `landmarks` / `box`: the face in the crop's pixels (for aligning the predicted face in the identity loss);
* `face_mask`: the face ellipse, grown a little: the part hidden from the conditioning image;
* `person_mask`: head and body (`faces.Region`), where the identity acts in multi-identity composites;
* `embedding` `[128]` and `detail` `[64, 128]`: the recogniser's view of the aligned face, from the full photo;
* `aligned`: the aligned face crop itself (`[150, 150, 3]`, for sample grids);

and `entries/<id>.json` with the source path, its size and time stamp, the caption (`NAME.txt` beside the
photo) or the reason the photo was rejected. A rerun skips every photo whose entry matches its file, so an
interrupted run resumes; `manifest.json` (format name and version, settings, samples) and `report.json` /
`report.txt` (rejected photos and why) are rewritten at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..errors import FaceStudioError
from ..faces.analysis import DOMINANT_FACE_RATIO, FaceAnalyzer
from ..faces.detection import Face
from ..faces.regions import Region, dilated_face_mask
from ..files import write_atomically, write_json, write_npz
from ..imaging import load_image

logger = logging.getLogger(__name__)

FORMAT = "facestudio-face-cache"
#: Bumped whenever the sample files change meaning; a cache of another version is refused, not misread.
VERSION = 1
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MANIFEST_NAME = "manifest.json"

#: Faces narrower than this (in the photo's pixels) carry too little detail for the recogniser.
MIN_FACE_SIZE = 48
#: Photos with more faces are crowds: no one person to reconstruct.
MAX_FACES = 4
#: How far the hidden face area reaches beyond the face ellipse, as a share of the face size.
FACE_MASK_GROWTH = 0.15


@dataclass(frozen=True)
class PrepareSettings:
    """What the cache was made with; a resumed run must use the same.

    Attributes:
        resolution (`int`): side of the square training crops (a multiple of 64).
        min_face_size (`int`): smallest accepted face width and height, in the photo's pixels.
        max_faces (`int`): photos with more faces are rejected.
    """

    resolution: int = 512
    min_face_size: int = MIN_FACE_SIZE
    max_faces: int = MAX_FACES

    def check(self) -> None:
        if self.resolution % 64 or not 64 <= self.resolution <= 2048:  # latents are 1/8, halved thrice in the UNet
            raise FaceStudioError(f"resolution {self.resolution}: must be a multiple of 64 between 64 and 2048")
        if self.min_face_size < 16:
            raise FaceStudioError(f"min face size {self.min_face_size}: must be at least 16 pixels")
        if self.max_faces < 1:
            raise FaceStudioError(f"max faces {self.max_faces}: must be at least 1")


@dataclass
class PrepareReport:
    """The outcome of `prepare_dataset`.

    Attributes:
        accepted (`list[str]`): sources (relative to the data folder) that became samples.
        rejected (`list[dict]`): `{"source", "reason"}` for every photo that did not.
        skipped (`int`): photos already in the cache from an earlier run (counted in the lists too).
    """

    accepted: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    skipped: int = 0


class RejectedPhoto(Exception):
    """A photo that cannot become a training sample; the message is the reason for the report."""


def find_photos(data_dir: Path) -> list[Path]:
    """Every photo under `data_dir`, at any depth, in a stable order (hidden folders skipped)."""
    found = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if Path(f).suffix.lower() in PHOTO_SUFFIXES]
    return found


def sample_id(relative: str) -> str:
    """A file-name-safe id for a photo, stable across runs: a hash of its path in the data folder."""
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()[:16]


def prepare_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    settings: PrepareSettings = PrepareSettings(), analyzer: FaceAnalyzer | None = None,
                    progress: bool = True) -> PrepareReport:
    """Cache faces, crops, embeddings, masks and captions of every photo under `data_dir` in `out_dir`.

    Args:
        data_dir (`str` or `os.PathLike`): the photos, in any folder structure; `NAME.txt` beside
            `NAME.jpg` is its caption.
        out_dir (`str` or `os.PathLike`): the cache; created, or resumed when it holds an earlier run.
        settings (`PrepareSettings`): crop size and face limits.
        analyzer (`FaceAnalyzer`, *optional*): detector and recogniser (dlib, torch backend).
        progress (`bool`, defaults to True): show a progress bar.

    Returns:
        `PrepareReport`; also written as `report.json` and `report.txt` in `out_dir`.

    Raises:
        FaceStudioError: `data_dir` is not a folder or holds no photo, or `out_dir` holds a cache of
            another format version or made with other settings.
    """
    from tqdm import tqdm

    settings.check()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise FaceStudioError(f"{data_dir}: no such folder of photos")
    photos = find_photos(data_dir)
    if not photos:
        raise FaceStudioError(f"{data_dir}: no photos found (looked for {', '.join(PHOTO_SUFFIXES)} at any depth)")
    _check_existing(out_dir, settings)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    (out_dir / "entries").mkdir(exist_ok=True)
    write_json(out_dir / MANIFEST_NAME, _manifest(settings, []))  # marks the folder as a cache of this version
    analyzer = analyzer or FaceAnalyzer()
    report, entries = PrepareReport(), []
    for path in tqdm(photos, desc="prepare", unit="photo", disable=not progress or None, dynamic_ncols=True):
        relative = path.relative_to(data_dir).as_posix()
        entry = _cached_entry(out_dir, relative, path)
        if entry is not None:
            report.skipped += 1
        else:
            entry = _prepare_one(path, relative, out_dir, settings, analyzer)
        entries.append(entry)
        if entry["status"] == "ok":
            report.accepted.append(relative)
        else:
            report.rejected.append({"source": relative, "reason": entry["reason"]})
    write_json(out_dir / MANIFEST_NAME, _manifest(settings, [e for e in entries if e["status"] == "ok"]))
    _write_report(out_dir, report, len(photos))
    return report


def _prepare_one(path: Path, relative: str, out_dir: Path, settings: PrepareSettings,
                 analyzer: FaceAnalyzer) -> dict:
    stat = path.stat()
    entry = {"id": sample_id(relative), "source": relative, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        arrays, extra = _sample_arrays(path, settings, analyzer)
    except RejectedPhoto as e:
        entry.update(status="rejected", reason=str(e))
    except (FaceStudioError, OSError, ValueError, cv2.error) as e:  # unreadable or undecodable: reported, not fatal
        entry.update(status="rejected", reason=f"unreadable: {e}")
    else:
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8", errors="replace").strip() if caption_file.is_file() else ""
        entry.update(status="ok", file=f"samples/{entry['id']}.npz", caption=caption, **extra)
        write_npz(out_dir / entry["file"], **arrays)
    write_json(out_dir / "entries" / f"{entry['id']}.json", entry)  # last: its presence means "done"
    return entry


def _sample_arrays(path: Path, settings: PrepareSettings, analyzer: FaceAnalyzer) -> tuple[dict, dict]:
    from ..guidance.identity import embed_aligned  # here: it loads diffusers, which the rest of prepare needs not

    image = np.asarray(load_image(path, min_side=32))
    faces = analyzer.detect(image)
    face = choose_training_face(faces, settings)
    recognizer = analyzer.recognizer
    aligned = analyzer.align(image, face, recognizer.template, recognizer.input_size).image
    embeddings, details = embed_aligned(recognizer, aligned[None])
    crop, crop_face = square_crop(image, face, settings.resolution)
    size = settings.resolution
    region = Region.from_face(crop_face, (size, size))
    arrays = {
        "image": crop,
        "landmarks": crop_face.landmark_array(),
        "box": np.asarray(crop_face.box, np.float32),
        # what the condition hides: the face ellipse's inner half grown by FACE_MASK_GROWTH of the face size
        "face_mask": dilated_face_mask(crop_face, size, size, FACE_MASK_GROWTH, threshold=0.5),
        "person_mask": region.mask(size, size, "person").astype(np.float32),
        "embedding": embeddings[0].astype(np.float32),
        "detail": details[0].astype(np.float16),  # [64, 128]: Identity.detail
        "aligned": aligned,
    }
    return arrays, {"faces": len(faces), "face_width": round(face.width, 1), "photo_size": list(image.shape[1::-1])}


def choose_training_face(faces: list[Face], settings: PrepareSettings) -> Face:
    """The one person a photo is about, or `RejectedPhoto` saying why there is none."""
    if not faces:
        raise RejectedPhoto("no face found")
    if len(faces) > settings.max_faces:
        raise RejectedPhoto(f"{len(faces)} faces: a crowd, at most {settings.max_faces} per photo")
    main = faces[0]
    if min(main.width, main.height) < settings.min_face_size:
        raise RejectedPhoto(f"face too small: {main.width:.0f}x{main.height:.0f} pixels, at least "
                            f"{settings.min_face_size}x{settings.min_face_size} needed")
    if len(faces) > 1 and main.area < DOMINANT_FACE_RATIO * faces[1].area:
        raise RejectedPhoto(f"{len(faces)} faces of similar size: no one main person")
    return main


def square_crop(image: np.ndarray, face: Face, size: int) -> tuple[np.ndarray, Face]:
    """The largest square of the photo that holds the face, placed around it, resized to `size`.

    The face sits at the horizontal centre and a third of the way down where the photo allows, so the crop
    shows head and shoulders as in a portrait. Returns the crop and the face in its coordinates.
    """
    h, w = image.shape[:2]
    side = min(h, w)
    cx, cy = face.center
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 3), 0, h - side))
    crop = image[y0:y0 + side, x0:x0 + side]
    scale = size / side
    resized = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    moved = Face(box=(face.box[0] - x0, face.box[1] - y0, face.box[2] - x0, face.box[3] - y0),
                 landmarks=tuple((x - x0, y - y0) for x, y in face.landmarks), score=face.score)
    return np.ascontiguousarray(resized), moved.scaled(scale)


def _cached_entry(out_dir: Path, relative: str, path: Path) -> dict | None:
    """The entry of an earlier run for this photo, if the photo is unchanged and its sample is there."""
    entry_path = out_dir / "entries" / f"{sample_id(relative)}.json"
    if not entry_path.is_file():
        return None
    try:
        entry = json.loads(entry_path.read_text())
    except ValueError:
        return None
    stat = path.stat()
    if (entry.get("source"), entry.get("size"), entry.get("mtime_ns")) != (relative, stat.st_size, stat.st_mtime_ns):
        return None
    if entry.get("status") == "ok" and not (out_dir / entry["file"]).is_file():
        return None
    return entry


def _manifest(settings: PrepareSettings, samples: Iterable[dict]) -> dict:
    from .. import __version__

    keep = ("id", "source", "file", "caption", "faces", "face_width", "photo_size")
    return {"format": FORMAT, "version": VERSION, "facestudio": __version__, "recognizer": "dlib",
            "settings": asdict(settings), "samples": [{k: s[k] for k in keep if k in s} for s in samples]}


def _check_existing(out_dir: Path, settings: PrepareSettings) -> None:
    manifest = out_dir / MANIFEST_NAME
    if not manifest.is_file():
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise FaceStudioError(f"{out_dir}: exists and is not a face cache; choose an empty or new folder")
        return
    data = read_manifest(out_dir)
    if data["settings"] != asdict(settings):
        raise FaceStudioError(f"{out_dir}: a cache made with {data['settings']}; resume with the same settings "
                              "or choose a new folder")


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    """The manifest of a face cache, refusing other formats and versions.

    Raises:
        FaceStudioError: no manifest, an unreadable one, or another format or version.
    """
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FaceStudioError(f"{cache_dir}: not a face cache (no {MANIFEST_NAME}); make one with "
                              "`facestudio prepare PHOTOS OUT`")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise FaceStudioError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise FaceStudioError(f"{path}: not a face cache manifest (a JSON object expected, found "
                              f"{type(data).__name__})")
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise FaceStudioError(f"{cache_dir}: cache format {data.get('format')!r} version {data.get('version')!r}; "
                              f"this facestudio reads {FORMAT!r} version {VERSION}: run `facestudio prepare` again "
                              "into a new folder")
    if not (isinstance(data.get("settings"), dict) and isinstance(data.get("samples"), list)):
        raise FaceStudioError(f"{path}: damaged manifest (its settings or samples are missing); run `facestudio "
                              "prepare` again into a new folder")
    return data


def _write_report(out_dir: Path, report: PrepareReport, total: int) -> None:
    write_json(out_dir / "report.json", {"photos": total, **asdict(report)})
    lines = [f"{total} photos: {len(report.accepted)} usable, {len(report.rejected)} rejected"]
    lines += [f"  {r['source']}: {r['reason']}" for r in report.rejected]
    write_atomically(out_dir / "report.txt", ("\n".join(lines) + "\n").encode())
