"""Where a command's files go: the room checked before a long run, and the folders a failed run made removed.

A full disk should stop a run before its models load, not after its work; a run that fails anyway keeps the
files it finished (each written whole by `files.write_atomically`) and leaves no empty folder behind.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import FaceStudioError

#: Room per PNG beyond its pixels: the header and text chunks (settings as JSON), zlib's block overhead.
PNG_OVERHEAD = 64 * 1024


def png_bytes_bound(width: int, height: int) -> int:
    """Most bytes an RGB PNG of `width` x `height` takes: stored without compression (noise does not
    compress), plus each row's filter byte and `PNG_OVERHEAD`."""
    return height * (3 * width + 1) + PNG_OVERHEAD


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


@contextmanager
def removed_if_left_empty(folder: Path):
    """Run the block; if it fails, remove the folders it created on the way to `folder` that are still empty
    (a run stopped before its first file leaves no trace; one with files keeps them and their folder)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for path in made:
            try:
                path.rmdir()
            except OSError:  # not empty, or never made: it and the folders above it stay
                break
        raise


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
