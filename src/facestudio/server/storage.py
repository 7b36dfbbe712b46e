"""The server's data folder: what is kept where, written atomically, trimmed to a retention limit.

    DATA/
      identities/<id>/identity.npz   embedding, detail tokens, tokens per photo (numpy arrays, allow_pickle=False)
      identities/<id>/identity.json  name, recogniser, the faces found in each photo and which was used
      images/<id>.png                an uploaded style or scene image, decoded and re-encoded (never the raw bytes)
      images/<id>.json               its size and the faces found in it
      jobs/<id>/job.json             a generation's request, state and result list
      jobs/<id>/NNN-seedS.png        its images, with settings and the AI-generated label in their metadata

Every file is written beside its destination and renamed into place, so a crash leaves either the old file,
the new one, or a hidden `.NAME.*.tmp` that `DataFolder()` removes on start; never half a file under a real name.
Identity embeddings are biometric data: folders are 0700 and files 0600 (older, wider ones are narrowed at start).
A file damaged anyway (disk fault, hand edit) makes only its own entry `DamagedEntry`; listings skip and report it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import files
from ..errors import FaceStudioError
from ..guidance.identity import Identity
from ..imaging import save_png

logger = logging.getLogger(__name__)

#: Ids are made by the server (`secrets.token_hex`); anything else in a URL is refused before touching disk.
#: The one definition: the app's path parameters and the request schema use it too.
ID_PATTERN = r"^[0-9a-f]{8,64}$"
#: A job's result images, `NNN-seedS.png` as `facestudio generate` names them (3 or more digits).
RESULT_NAME_PATTERN = r"^[0-9]{3,}-seed[0-9]+\.png$"
_ID = re.compile(ID_PATTERN)
_RESULT_NAME = re.compile(RESULT_NAME_PATTERN)


def result_seed(name: str) -> int:
    """The seed a result image was made with, from its name (`NNN-seedS.png`)."""
    return int(name.rsplit("-seed", 1)[1].removesuffix(".png"))
#: Only the user running the server may read what it keeps.
DIR_MODE, FILE_MODE = 0o700, 0o600
#: What reading a damaged `.npz` raises (a truncated zip, a bad deflate stream, a pickled or missing array).
_NPZ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)
#: The fields a stored description must have for the code that reads it.
IDENTITY_FIELDS, IMAGE_FIELDS = ("id", "name", "recognizer", "created", "photos"), ("width", "height", "faces")


class DamagedEntry(FaceStudioError):
    """A stored identity or image whose files cannot be read; the message says which and what to do."""


class StorageError(FaceStudioError):
    """The data folder cannot be written (read-only, full, no permission); the message names the path."""


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def write_json(path: Path, value) -> Path:
    return files.write_json(path, value, sort_keys=True, mode=FILE_MODE)


def read_json(path: Path):
    return json.loads(path.read_text())


def storage_error(path: Path, error: OSError) -> StorageError:
    """An OSError from writing under the data folder, as one line naming the path and the reason."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}.get(error.errno, error.strerror or type(error).__name__)
    return StorageError(f"cannot write to the data folder at {path}: {reason}")


class DataFolder:
    """The folders under `root`, stray temporary files removed, and the retention limit on finished jobs.

    Args:
        root (`str` or `Path`): the data folder (created if missing).
        max_jobs (`int`, defaults to 200): finished jobs kept on disk; the oldest beyond that are deleted.
    """

    def __init__(self, root: str | os.PathLike, max_jobs: int = 200):
        self.root = Path(root).expanduser().resolve()
        self.max_jobs = max_jobs
        self.identities = self.root / "identities"
        self.images = self.root / "images"
        self.jobs = self.root / "jobs"
        try:
            for folder in (self.identities, self.images, self.jobs):
                folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self._make_private()
            self.remove_temporary_files()
            self._check_writable()
        except OSError as e:
            raise storage_error(self.root, e) from None
        self._lock = threading.Lock()

    def _make_private(self) -> None:
        """Folders 0700 and files 0600: the root and our three folders, never anything else under the root."""
        os.chmod(self.root, DIR_MODE)
        for top in (self.identities, self.images, self.jobs):
            os.chmod(top, DIR_MODE)
            for folder, dirs, names in os.walk(top):  # links are not ours (the server makes none): left alone
                for d in dirs:
                    if not os.path.islink(path := os.path.join(folder, d)):
                        os.chmod(path, DIR_MODE)
                for n in names:
                    if not os.path.islink(path := os.path.join(folder, n)):
                        os.chmod(path, FILE_MODE)

    def _check_writable(self) -> None:
        """Write and remove a small file, so a read-only or full data folder stops the server at start, not at
        the first upload."""
        files.write_atomically(self.root / ".write-check", b"facestudio\n" * 400, mode=FILE_MODE)
        (self.root / ".write-check").unlink()

    def remove_temporary_files(self) -> int:
        """Delete `.NAME.*.tmp` files a crash left behind; returns how many."""
        stray = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for path in stray:
            path.unlink(missing_ok=True)
        return len(stray)

    # ---------------------------------------------------------------- identities

    def save_identity(self, identity_id: str, identity: Identity, info: dict, thumbnail=None) -> None:
        """Store an identity: its arrays, `thumbnail` (a small PIL image of the face, shown on the page) and its
        description, last."""
        folder = self.identities / identity_id
        # Half an identity (arrays without their description) is never left behind: biometric data, unlisted.
        with _writing(folder, undo=lambda: shutil.rmtree(folder, ignore_errors=True)):
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
            files.write_npz(folder / "identity.npz", mode=FILE_MODE, embedding=identity.embedding,
                            detail=identity.detail, tokens_per_photo=np.int64(identity.tokens_per_photo))
            if thumbnail is not None:
                save_png(thumbnail, folder / "thumbnail.png", mode=FILE_MODE)
            # The description last: an identity is listed only once its arrays are in place.
            write_json(folder / "identity.json", info)

    def identity_info(self, identity_id: str) -> dict | None:
        """Its description, None when there is none; `DamagedEntry` when `identity.json` cannot be read."""
        path = self.identities / identity_id / "identity.json"
        if not (valid_id(identity_id) and path.is_file()):
            return None
        info = _read_entry(path, f"identity {identity_id}", IDENTITY_FIELDS)
        if info["id"] != identity_id:  # copied or edited by hand: its arrays and its name would not match
            raise DamagedEntry(f"identity {identity_id} is damaged: its identity.json names {str(info['id'])[:80]}; "
                               "delete it and upload the photos again")
        return info

    def load_identity(self, identity_id: str, info: dict | None = None) -> Identity | None:
        """The stored identity, None when there is none; `info` is its `identity_info` when already read."""
        if info is None:
            info = self.identity_info(identity_id)
            if info is None:
                return None
        try:
            with np.load(self.identities / identity_id / "identity.npz", allow_pickle=False) as arrays:
                # Files written before `tokens_per_photo` was stored lack it: 0, the recogniser's own count.
                per_photo = int(arrays["tokens_per_photo"]) if "tokens_per_photo" in arrays.files else 0
                return Identity(arrays["embedding"], arrays["detail"], info["recognizer"], info["name"],
                                tokens_per_photo=per_photo)
        except _NPZ_ERRORS as e:  # a damaged file, or one holding pickled objects: not loaded
            if not (self.identities / identity_id).is_dir():  # deleted since its description was read
                return None
            raise DamagedEntry(f"identity {identity_id}: its stored arrays (identity.npz) are damaged "
                               f"({type(e).__name__}: {str(e)[:200]}); delete it and upload the photos again") from None

    def list_identities(self) -> tuple[list[dict], list[dict]]:
        """The readable descriptions, oldest first, and `{"id", "error"}` for each damaged one (arrays unread:
        the caller finds those damaged when it opens them)."""
        infos, damaged = [], []
        for folder in self.identities.iterdir():
            if folder.is_dir() and valid_id(folder.name):
                try:
                    info = self.identity_info(folder.name)
                except DamagedEntry as e:
                    damaged.append({"id": folder.name, "error": str(e)})
                    continue
                if info is not None:  # None: an upload that never got its description (interrupted)
                    infos.append(info)
        return sorted(infos, key=lambda i: i["created"]), damaged

    def identity_thumbnail(self, identity_id: str) -> Path | None:
        path = self.identities / identity_id / "thumbnail.png"
        return path if valid_id(identity_id) and path.is_file() else None

    def rename_identity(self, identity_id: str, name: str) -> dict | None:
        """Give an identity a new name (its description rewritten whole); None when there is no such identity."""
        info = self.identity_info(identity_id)
        if info is None:
            return None
        info = {**info, "name": name}
        with _writing(self.identities / identity_id):
            write_json(self.identities / identity_id / "identity.json", info)
        return info

    def delete_identity(self, identity_id: str) -> bool:
        folder = self.identities / identity_id
        if not valid_id(identity_id) or not folder.is_dir():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    # ---------------------------------------------------------------- uploaded style / scene images

    def image_path(self, image_id: str) -> Path | None:
        path = self.images / f"{image_id}.png"
        return path if valid_id(image_id) and path.is_file() else None

    def image_info(self, image_id: str) -> dict | None:
        """Its description, None when there is none; `DamagedEntry` when `<id>.json` cannot be read."""
        path = self.images / f"{image_id}.json"
        if not (valid_id(image_id) and path.is_file()):
            return None
        return _read_entry(path, f"uploaded image {image_id}", IMAGE_FIELDS)

    def save_image(self, image_id: str, image, info: dict) -> None:
        """Store an uploaded image, re-encoded (the uploaded bytes are never kept), then trim the oldest."""
        png = self.images / f"{image_id}.png"
        with _writing(png, undo=lambda: png.unlink(missing_ok=True)):
            save_png(image, png, mode=FILE_MODE)
            write_json(self.images / f"{image_id}.json", info)
        self.trim_images()

    def trim_images(self) -> None:
        """Delete the oldest uploaded images beyond `max_jobs` (a queued job whose image went fails clearly)."""
        with self._lock:
            pngs = sorted(self.images.glob("*.png"), key=lambda p: p.stat().st_mtime)
            for png in pngs[:max(0, len(pngs) - self.max_jobs)]:
                png.with_suffix(".json").unlink(missing_ok=True)
                png.unlink(missing_ok=True)

    # ---------------------------------------------------------------- jobs

    def job_folder(self, job_id: str) -> Path:
        return self.jobs / job_id

    def save_job(self, job_id: str, record: dict) -> None:
        folder = self.job_folder(job_id)
        with _writing(folder):
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
            write_json(folder / "job.json", record)

    def save_result(self, job_id: str, name: str, image, metadata: dict) -> None:
        """One result image of a job, never replacing one already there."""
        path = self.job_folder(job_id) / name
        with _writing(path):
            save_png(image, path, metadata, overwrite=False, mode=FILE_MODE)

    def job_images(self, job_id: str) -> list[str]:
        """The result images on disk for a job, in order: what survives a crash, whatever its record says."""
        folder = self.job_folder(job_id)
        names = [p.name for p in folder.iterdir() if _RESULT_NAME.fullmatch(p.name)] if folder.is_dir() else []
        return sorted(names, key=lambda n: int(n.split("-", 1)[0]))

    def job_records(self) -> list[tuple[Path, object]]:
        """Every readable `job.json` as (path, its JSON value), in no particular order; an unreadable one is
        logged and skipped."""
        records = []
        for path in self.jobs.glob("*/job.json"):
            try:
                records.append((path, read_json(path)))
            except (OSError, ValueError) as e:
                logger.warning("%s: not a job record (%s); ignored", path, e)
        return records

    def delete_job(self, job_id: str) -> None:
        """Remove a job's folder (a job refused after its first record was written)."""
        if valid_id(job_id):
            shutil.rmtree(self.job_folder(job_id), ignore_errors=True)

    def job_image(self, job_id: str, name: str) -> Path | None:
        path = self.job_folder(job_id) / name
        ok = valid_id(job_id) and _RESULT_NAME.fullmatch(name) and path.is_file()
        return path if ok else None

    def delete_result(self, job_id: str, name: str) -> bool:
        """Delete one image of a job; False when there is no such image."""
        path = self.job_image(job_id, name)
        if path is None:
            return False
        with _writing(path):
            path.unlink(missing_ok=True)
        return True

    def trim_jobs(self, keep: set[str] = frozenset()) -> list[str]:
        """Delete the oldest job folders beyond `max_jobs` (never those in `keep`: queued or running)."""
        with self._lock:
            folders = [p for p in self.jobs.iterdir() if p.is_dir() and p.name not in keep]
            folders.sort(key=lambda p: p.stat().st_mtime)
            excess = folders[:max(0, len(folders) - self.max_jobs)]
            for folder in excess:
                shutil.rmtree(folder, ignore_errors=True)
            return [p.name for p in excess]


@contextlib.contextmanager
def _writing(path: Path, undo=None):
    """Writes under `path` raise `StorageError` naming it (full disk, read-only), not a bare OSError that would
    read as a bug, after `undo()` removed what was written; FileExistsError (a result name taken twice) is a
    bug, and passes."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as e:
        if undo is not None:
            undo()
        raise storage_error(path, e) from None

def _read_entry(path: Path, label: str, fields: tuple[str, ...]) -> dict:
    """A stored description with the fields its readers use, or `DamagedEntry` saying what is wrong."""
    try:
        value = read_json(path)
    except (OSError, ValueError) as e:  # ValueError: broken JSON, or bytes that are not UTF-8
        problem = f"{path.name} cannot be read ({type(e).__name__}: {str(e)[:120]})"
    else:
        missing = [f for f in fields if f not in value] if isinstance(value, dict) else list(fields)
        if not missing:
            return value
        problem = f"{path.name} lacks {', '.join(missing)}"
    raise DamagedEntry(f"{label} is damaged: {problem}; delete it and upload it again")
