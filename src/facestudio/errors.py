"""Exceptions that name the bad input.

Every error a user can cause derives from :class:`FaceStudioError`; the CLI prints its message and exits
non-zero without a traceback. An `OSError` with an errno (a full or read-only disk, a folder in a file's
place) is the machine's answer, printed by :func:`os_error_message` the same way. Anything else reaching the
CLI is a bug.
"""

from __future__ import annotations

import errno


class FaceStudioError(Exception):
    """Base class for errors caused by input, files or settings (not by bugs)."""


class ImageError(FaceStudioError):
    """An image could not be read: missing, empty, truncated, not an image, too large or too small."""


class NoFaceError(FaceStudioError):
    """No face was found where one was needed."""


class AmbiguousFaceError(FaceStudioError):
    """Several faces were found where one was expected and none was chosen."""


class ModelFileError(FaceStudioError):
    """A model file is missing, damaged or of the wrong kind."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message without its final full stop (its type name when empty), for
    quoting a library's error inside one of ours."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


#: What the user can do about an operating-system error.
_FREE_SPACE, _ANOTHER_PATH = "free some space or write elsewhere", "remove it or give another path"
_PERMISSIONS = "change the permissions or use another path"
#: An operating-system error in words, and the remedy, by errno (others: the system's own words).
_OS_ERROR_WORDS = {
    errno.ENOSPC: ("no space left on the device", _FREE_SPACE),
    errno.EDQUOT: ("disk quota exceeded", _FREE_SPACE),
    errno.EFBIG: ("file too large for the file system or the file size limit (ulimit -f)",
                  "raise the limit or write elsewhere"),
    errno.EROFS: ("read-only file system", "write elsewhere"),
    errno.EACCES: ("permission denied", _PERMISSIONS),
    errno.EPERM: ("operation not permitted", _PERMISSIONS),
    errno.EISDIR: ("is a folder where a file should be", _ANOTHER_PATH),
    errno.ENOTDIR: ("a file is in the way where a folder should be", _ANOTHER_PATH),
    errno.EEXIST: ("exists and is in the way (a file where a folder should be, or the reverse)", _ANOTHER_PATH),
    errno.ENOTEMPTY: ("a folder that is not empty is in the way", _ANOTHER_PATH),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "give a shorter path"),
    errno.EIO: ("input/output error: the disk or device failed", "check the device"),
}
#: Errnos only writing causes: their message reads "cannot write PATH".
_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: the path, what went wrong in words, and what to do.

    Example: `cannot write /mnt/out/000-seed0.png: no space left on the device; free some space or write
    elsewhere`.
    """
    words, remedy = _OS_ERROR_WORDS.get(error.errno, (error.strerror or first_line(error), None))
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    where = f"cannot write {paths}: " if paths and error.errno in _WRITING else f"{paths}: " if paths else ""
    return where + words + (f"; {remedy}" if remedy else "")
