"""Exceptions that name the bad input.

Every error a user can cause derives from :class:`FaceStudioError`; the CLI prints its message and exits
non-zero without a traceback. Anything else reaching the CLI is a bug.
"""

from __future__ import annotations


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
