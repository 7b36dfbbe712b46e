"""Uploaded files are untrusted: their type is judged from their first bytes, their size and pixel count are
capped, and they are decoded only by `imaging.load_image` (header checked before any pixel is decoded).
Nothing uploaded is executed, unpickled or stored as given: images are re-encoded as PNG before they are kept.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from ..errors import FaceStudioError, ImageError
from ..imaging import load_image

#: Largest upload body, in bytes, unless the app is told otherwise.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest uploaded image, in pixels (a 40-megapixel phone photo passes; a decompression bomb does not).
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000

#: File signatures of the formats `load_image` accepts, so a text file named .png is refused before PIL sees it.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class UploadError(FaceStudioError):
    """An upload was refused; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"P6" or data[:2] == b"P5":
        return "PPM"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def decode_upload(data: bytes, name: str, limits: UploadLimits, min_side: int = 32) -> Image.Image:
    """An uploaded file as an RGB image, or `UploadError` naming the file and the problem.

    Raises:
        UploadError: empty (400), over the byte cap (413), not an image by its content (415), too many
            pixels, truncated or too small (422).
    """
    if not data:
        raise UploadError(f"{name}: file is empty (0 bytes)", 400)
    if len(data) > limits.max_bytes:
        raise UploadError(f"{name}: file is {len(data)} bytes, above the limit of {limits.max_bytes}", 413)
    kind = sniff_format(data)
    if kind is None:
        raise UploadError(f"{name}: not an image by its content (expected JPEG, PNG, WebP, BMP, GIF, TIFF or "
                          "PPM data, whatever the file name says)", 415)
    width, height = header_size(data, kind)
    if width * height > limits.max_pixels:
        raise UploadError(f"{name}: image header says {width}x{height} pixels ({width * height / 1e6:.1f} "
                          f"megapixels), above this server's limit of {limits.max_pixels / 1e6:.0f} megapixels", 422)
    try:
        return load_image(data, max_pixels=limits.max_pixels, min_side=min_side, name=name)
    except ImageError as e:
        raise UploadError(str(e), 422) from None


def header_size(data: bytes, kind: str) -> tuple[int, int]:
    """Width and height from the file's header alone, (0, 0) when the header cannot be read.

    PIL's format plugin parses only the header when constructed; `Image.open` would refuse a huge size with
    its own wording before we could name the size.
    """
    Image.init()
    factory = Image.OPEN.get(kind, (None,))[0]
    if factory is None:
        return 0, 0
    try:
        image = factory(io.BytesIO(data), None)
        return image.size
    except Exception:  # a broken header: load_image says what is wrong with it
        return 0, 0


def safe_filename(name: str | None, fallback: str) -> str:
    """A label for messages: the upload's base name, printable characters only, at most 80."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if c.isprintable())[:80]
    return clean or fallback
