"""Where a command's files go: the most room a PNG takes, and the folders a failed run made removed.

A full disk should stop a run before its models load (`files.check_free_space` with `png_bytes_bound`), not
after its work; a run that fails anyway keeps the files it finished (each written whole by
`files.write_atomically`) and leaves no empty folder behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

#: Room per PNG beyond its pixels: the header and text chunks (settings as JSON), zlib's block overhead.
PNG_OVERHEAD = 64 * 1024


def png_bytes_bound(width: int, height: int) -> int:
    """Most bytes an RGB PNG of `width` x `height` takes: stored without compression (noise does not
    compress), plus each row's filter byte and `PNG_OVERHEAD`."""
    return height * (3 * width + 1) + PNG_OVERHEAD


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
