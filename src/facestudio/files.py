"""Files written whole or not at all: a temporary file beside the target, flushed to disk, then renamed.

A crash or a full disk midway leaves the old file (or none), never a half-written one; `check_free_space`
refuses a long run whose output cannot fit before it starts.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import FaceStudioError


def write_atomically(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *,
                     overwrite: bool = True, mode: int | None = None) -> Path:
    """Write `data` (bytes, or a function writing into an open binary file) to a hidden temporary file beside
    `path`, flush it to disk, then rename it into place, readable as the umask allows (or with exactly `mode`,
    e.g. 0o600 for private data: the file never exists under its name with wider permissions).

    Raises:
        FileExistsError: `overwrite` is False and `path` exists (checked again at the rename, so a file that
            appears meanwhile is not replaced either).
        OSError: the file system's refusal (full, read-only, a folder in the way), naming `path` rather than
            the temporary file; nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: exists")
    prefix = f".{path.name}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data) if isinstance(data, (bytes, bytearray)) else data(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)  # mkstemp's file is private; ours may not be
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails, instead of replacing, if the name was taken meanwhile
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as e:
        # A full disk names no file, a failed rename names the hidden temporary one: name the target instead.
        if e.errno is not None and (e.filename is None or Path(str(e.filename)).name.startswith(prefix)):
            raise OSError(e.errno, e.strerror, str(path)) from e  # OSError(errno, ...) picks the subclass
        raise
    return path


def write_json(path: str | os.PathLike, value, *, mode: int | None = None, **dumps) -> Path:
    """`value` as JSON (indented), written atomically (`mode` as for `write_atomically`)."""
    return write_atomically(path, (json.dumps(value, indent=1, **dumps) + "\n").encode(), mode=mode)


def write_npz(path: str | os.PathLike, *, mode: int | None = None, **arrays) -> Path:
    """numpy arrays as a compressed `.npz`, written atomically (`mode` as for `write_atomically`)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_atomically(path, buffer.getvalue(), mode=mode)


def existing_ancestor(path: Path) -> Path | None:
    """`path` itself or its nearest parent that exists: the folder whose file system a new `path` lands on."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def check_free_space(folder: Path, needed: int, what: str, option: str = "--output") -> None:
    """Refuse, before any work, to write `needed` bytes into `folder` when its file system has less free.

    Raises:
        FaceStudioError: naming the folder, the bytes needed and free, and what to do.
    """
    where = existing_ancestor(folder.absolute())
    free = shutil.disk_usage(where).free
    if free < needed:
        raise FaceStudioError(f"{option} {folder}: not enough room for {what} (up to {_megabytes(needed)} "
                              f"needed, {_megabytes(free)} free); free some space or choose another {option}")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def _umask() -> int:
    """The process umask, read without changing it where possible (os.umask sets it process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
