"""Uploaded files are untrusted: their type is judged from their first bytes, their size and pixel count are
capped, and they are decoded only by `imaging.load_image` (header checked before any pixel is decoded).
Nothing uploaded is executed, unpickled or stored as given: images are re-encoded as PNG before they are kept.

Memory is bounded too: `UploadPool` runs the decoding and face analysis of a few uploads at a time (the rest
wait without a thread, or get 429 beyond a bound), and each photo is decoded, analysed and dropped in turn, at
most `ANALYSIS_SIDE` pixels on its longest side (a JPEG is decoded at a reduced scale to begin with).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import anyio
import anyio.to_thread
from PIL import Image

from ..errors import FaceStudioError, ImageError
from ..imaging import load_image

#: Largest upload body, in bytes, unless the app is told otherwise.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest uploaded image, in pixels (a 40-megapixel phone photo passes; a decompression bomb does not).
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000
#: Longest side an upload is decoded at. Face detection searches at 640 and 1280 pixels and face crops are
#: smaller still, so more only costs memory: a 7000x7000 photo is 147 MB as RGB, 12 MB at this side.
ANALYSIS_SIDE = 2048

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
    """An upload was refused; `status` is the HTTP status that says why (429 comes with `retry_after` seconds)."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS


@dataclass(frozen=True)
class Decoded:
    """An uploaded image as decoded (at most the `max_side` asked for), and the size of the file's own image."""

    image: Image.Image
    width: int
    height: int

    @property
    def scale(self) -> float:
        """From the decoded image's pixels to the file's: boxes found in `image` times this are the photo's."""
        return self.width / self.image.width


class UploadPool:
    """Runs upload work (decoding, face analysis, encoding) `workers` at a time in threads of its own.

    Uploads beyond those wait in the event loop, holding no thread and no decoded pixels; beyond `waiting`
    of them a new one is refused with `UploadError` 429, so memory stays bounded whatever the number of clients.
    State is per pool (one per app); the counter is only touched from the event loop.
    """

    def __init__(self, workers: int = 2, waiting: int = 16, retry_after: int = 5):
        if workers < 1 or waiting < 0:
            raise ValueError("an upload pool needs at least one worker and a waiting bound >= 0")
        self.workers, self.waiting, self.retry_after = workers, waiting, retry_after
        self._limiter = anyio.CapacityLimiter(workers)
        self._admitted = 0

    async def run(self, work, *args):
        if self._admitted >= self.workers + self.waiting:
            raise UploadError(f"the server is busy with {self._admitted} uploads; retry in about "
                              f"{self.retry_after} s", 429, retry_after=self.retry_after)
        self._admitted += 1
        try:
            return await anyio.to_thread.run_sync(work, *args, limiter=self._limiter)
        finally:
            self._admitted -= 1


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"P6" or data[:2] == b"P5":
        return "PPM"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def decode_upload(data: bytes, name: str, limits: UploadLimits, min_side: int = 32,
                  max_side: int | None = ANALYSIS_SIDE) -> Decoded:
    """An uploaded file as an RGB image at most `max_side` on its longest side (None: as large as it is), with
    the file's own size, or `UploadError` naming the file and the problem.

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
        image = load_image(data, max_pixels=limits.max_pixels, min_side=min_side, name=name, max_side=max_side)
    except ImageError as e:
        raise UploadError(str(e), 422) from None
    if max(image.size) == max(width, height) or not width:  # not shrunk: its size is the file's (oriented)
        return Decoded(image, image.width, image.height)
    # Shrunk: the header's size, turned as the EXIF orientation turned the image.
    same_way = (image.width >= image.height) == (width >= height)
    return Decoded(image, *((width, height) if same_way else (height, width)))


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


def read_photos(analyzer, photos, limits: UploadLimits, face: int | None, advice: str):
    """Photos of one person, each decoded (at most `ANALYSIS_SIDE`), its faces found and one chosen (`face`, or
    the one clear face; `advice` names the field that chooses), in turn: the checks every uploaded photo passes.

    Args:
        photos: `(label, encoded bytes)` pairs; the label names the photo in messages.

    Returns:
        `(arrays, chosen faces, descriptions, digests)`: RGB arrays, the `Face` used in each, per photo its
        name, size, the faces found (in the file's pixels) and which was used, and the files' sha256 digests.
    """
    import hashlib

    from ..faces.analysis import select_face_index
    from ..imaging import to_array

    arrays, chosen, described, digests = [], [], [], []
    for label, data in photos:
        digests.append(hashlib.sha256(data).hexdigest())
        decoded = decode_upload(data, label, limits)
        array = to_array(decoded.image)
        faces = analyzer.detect(array)
        used = select_face_index(faces, face, source=label, advice=advice)
        arrays.append(array)
        chosen.append(faces[used])
        described.append({"name": label, "width": decoded.width, "height": decoded.height,
                          "faces": [face_json(f.scaled(decoded.scale)) for f in faces], "used": used})
    return arrays, chosen, described, digests


def face_json(face) -> dict:
    """A detected face as the API reports it: box, score and five landmarks, rounded."""
    return {"box": [round(float(v), 1) for v in face.box], "score": round(float(face.score), 3),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks]}


def safe_filename(name: str | None, fallback: str) -> str:
    """A label for messages: the upload's base name, printable characters only, at most 80."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if c.isprintable())[:80]
    return clean or fallback


def face_thumbnail(photo, face, side: int = 96):
    """A `side` x `side` PIL picture of `face` (a detected face) in `photo` (an RGB array): its box with a margin,
    squared and kept inside the photo."""
    from PIL import Image

    height, width = photo.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in face.box)
    half = max(x1 - x0, y1 - y0) * 0.8
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = max(0, round(cx - half)), max(0, round(cy - half))
    right, bottom = min(width, round(cx + half)), min(height, round(cy + half))
    crop = Image.fromarray(photo[top:bottom, left:right])
    crop.thumbnail((side, side))
    return crop
