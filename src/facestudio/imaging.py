"""Reading images safely and writing them atomically.

Every image that enters facestudio (a face photo, a style or scene image, an upload to the server) goes
through :func:`load_image`: it refuses what is not an image before decoding it, refuses decompression bombs
from the header alone, applies the EXIF orientation and returns 8-bit RGB whatever the file's mode was.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import ImageError
from .files import write_atomically
from .labels.xmp import TRAINED_ALGORITHMIC_MEDIA

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

#: Largest image accepted by default, in pixels (100 megapixels, about 300 MB decoded as RGB).
DEFAULT_MAX_PIXELS = 100_000_000

#: Formats accepted. Others (EPS runs Ghostscript, for instance) are refused before any decoder runs.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # JPEG covers MPO (phone photos)

#: Transparent pixels are composited onto this colour: a cut-out portrait reads as a studio photo.
ALPHA_BACKGROUND = (255, 255, 255)


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    name: str | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """Read an image as 8-bit RGB with its EXIF orientation applied.

    Args:
        source (`str`, `os.PathLike`, `bytes`, binary file or `PIL.Image.Image`):
            A path, the encoded bytes, an open binary file, or an already decoded image.
        max_pixels (`int`, defaults to `DEFAULT_MAX_PIXELS`):
            Images with more pixels are refused from their header, before decoding.
        min_side (`int`, defaults to 1):
            Images whose width or height is smaller are refused.
        name (`str`, *optional*):
            How to call the image in error messages; defaults to the path, or `"image"`.
        max_side (`int`, *optional*):
            Images larger than this on their longest side come back shrunk to it (aspect kept). A JPEG is then
            decoded at a reduced scale to begin with, so a huge photo never exists in memory at full size.

    Returns:
        `PIL.Image.Image` in mode `"RGB"`.

    Raises:
        ImageError: missing, empty, unreadable, truncated, unsupported, too large or too small.

    Example:
        ```py
        >>> from facestudio.imaging import load_image
        >>> image = load_image("examples/obama.jpg")
        >>> image.mode, image.size
        ('RGB', (910, 1137))
        ```
    """
    if isinstance(source, Image.Image):
        label = name or "image"
        image = source
    else:
        label, image = _open(source, name, max_pixels)
        _check_pixels(label, image.size, max_pixels)
        if max_side is not None:
            _draft(image, max_side, min_side)
        image = _decode(label, image)
    image = _apply_orientation(image)
    if min(image.size) < min_side:
        w, h = image.size
        raise ImageError(f"{label}: image is {w}x{h} pixels; at least {min_side}x{min_side} is needed")
    image = to_rgb(image)
    if max_side is not None and max(image.size) > max_side:
        image = image.copy() if image is source else image  # never resize the caller's own image in place
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _draft(image: Image.Image, max_side: int, min_side: int) -> None:
    """Ask the decoder (JPEG's DCT scaling; other formats ignore it) for the smallest size still at least the
    final one, keeping the short side at `min_side` or more so the size check sees what the file holds."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale < 1:
        image.draft(image.mode, (max(min_side, round(w * scale)), max(min_side, round(h * scale))))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Alpha is composited onto `ALPHA_BACKGROUND`; 16- and 32-bit integer and float greyscale are scaled
    to 0..255 instead of being clipped (PIL's own `convert` clips them to white).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I") or mode == "F":
        grey = _scale_to_uint8(np.asarray(image), mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as a contiguous `uint8` array of shape `[height, width, 3]`."""
    return np.ascontiguousarray(np.asarray(to_rgb(image), dtype=np.uint8))


def save_png(image: Image.Image, path: str | os.PathLike, metadata: dict | None = None, *,
             overwrite: bool = True, mode: int | None = None) -> Path:
    """Write a PNG atomically, with `metadata` stored as JSON in its `facestudio` text chunk.

    The file is written beside its destination and moved into place, so a crash never leaves a
    half-written image and an existing file is replaced whole or not at all. If the metadata says
    `"ai_generated": true` (see `ai_generated_metadata`), the file carries every label of `labels.write` too:
    a plain `AI-generated` text chunk, A1111's `parameters`, XMP with the IPTC digital source type and signed
    C2PA content credentials.

    Args:
        image (`PIL.Image.Image`): The image to write.
        path (`str` or `os.PathLike`): Destination; missing parent folders are created.
        metadata (`dict`, *optional*): JSON-serialisable settings to embed.
        overwrite (`bool`, defaults to `True`): with False, an existing `path` is never replaced, even one
            that appears while writing: `FileExistsError` instead.
        mode (`int`, *optional*): the file's permissions (default: as the umask allows).

    Returns:
        The destination as a `Path`.
    """
    if metadata is not None and metadata.get("ai_generated") is True:
        from .labels.write import encode_labelled

        data = encode_labelled(image, metadata, ".png", title=Path(path).name)
        return write_atomically(path, data, overwrite=overwrite, mode=mode)
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_itxt("facestudio", json.dumps(metadata, sort_keys=True))
    return write_atomically(path, lambda f: image.save(f, format="PNG", pnginfo=info), overwrite=overwrite,
                            mode=mode)


def read_png_metadata(path: str | os.PathLike) -> dict | None:
    """The JSON written by :func:`save_png` in the current schema (`labels.schema.normalised`: files written
    before it read the same), or `None` when the file has none."""
    from .labels.schema import normalised

    with Image.open(path) as image:
        text = image.info.get("facestudio")
    if text is None:
        return None
    metadata = json.loads(text)
    return normalised(metadata) if isinstance(metadata, dict) else metadata


def _open(source, name: str | None, max_pixels: int) -> tuple[str, Image.Image]:
    """Open lazily (header only) and say clearly why not."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(source)
        if not path.exists():
            raise ImageError(f"{label}: no such file")
        if not path.is_file():
            raise ImageError(f"{label}: not a file")
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: file is empty (0 bytes)")
        fp = path
    elif isinstance(source, bytes):
        label = name or "image"
        if not source:
            raise ImageError(f"{label}: image data is empty (0 bytes)")
        fp = io.BytesIO(source)
    else:
        label = name or getattr(source, "name", None) or "image"
        fp = source
    Image.init()  # register every plugin, so that `formats` can name WEBP and TIFF
    try:
        return label, Image.open(fp, formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as e:
        # PIL refuses above twice its own limit before we can read the size: say it our way.
        raise ImageError(f"{label}: image is too large to decode safely ({e}); the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not a supported image file (expected one of "
                         f"{', '.join(SUPPORTED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(f"{label}: image file is truncated or corrupt ({e})") from None


def _check_pixels(label: str, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{label}: image header says {w}x{h} pixels")
    if w * h > max_pixels:
        raise ImageError(f"{label}: image is {w}x{h} pixels ({w * h / 1e6:.1f} megapixels), above the "
                         f"limit of {max_pixels / 1e6:.0f} megapixels; downscale it first")


def _decode(label: str, image: Image.Image) -> Image.Image:
    """Decode the first frame fully, turning decoder failures into one clear error."""
    try:
        image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise ImageError(f"{label}: image data is truncated or corrupt ({e})") from None
    return image


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # A broken EXIF block must not cost the user the photo; keep it unrotated.
        return image


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif mode.startswith("I;16") or values.max(initial=0) > 255:
        top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
    else:
        top = 255.0
    return np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)




def ai_generated_metadata(settings: dict) -> dict:
    """`settings` plus the machine-readable label every generated file carries.

    Adds `"ai_generated": True`, the IPTC digital source type `TRAINED_ALGORITHMIC_MEDIA` and
    `"software": "facestudio <version>"`; the settings' own keys win for anything else, never for these.

    Args:
        settings (`dict`): JSON-serialisable settings that made the image (prompt, seed, models, ...).

    Returns:
        A new `dict`, ready for `save_png(..., metadata=...)`.

    Example:
        ```py
        >>> from facestudio.imaging import ai_generated_metadata
        >>> ai_generated_metadata({"prompt": "an astronaut", "seed": 3})["ai_generated"]
        True
        ```
    """
    from . import __version__

    return {**settings, "ai_generated": True, "digital_source_type": TRAINED_ALGORITHMIC_MEDIA,
            "software": f"facestudio {__version__}"}


def contact_sheet(images: list[Image.Image], labels: list[str] | None = None,
                  columns: int | None = None) -> Image.Image:
    """A grid of images, each with an optional caption underneath, on a white background.

    Args:
        images (`list[PIL.Image.Image]`): The images, placed row by row; sizes may differ (each cell is as
            large as the largest image, images are centred in their cell).
        labels (`list[str]`, *optional*): One caption per image, e.g. `"seed 3"`.
        columns (`int`, *optional*): Images per row; defaults to a near-square grid.

    Returns:
        `PIL.Image.Image` in mode `"RGB"`.

    Example:
        ```py
        >>> from PIL import Image
        >>> from facestudio.imaging import contact_sheet
        >>> sheet = contact_sheet([Image.new("RGB", (64, 64))] * 3, labels=["seed 0", "seed 1", "seed 2"])
        >>> sheet.size
        (140, 168)
        ```
    """
    from PIL import ImageDraw

    if not images:
        raise ValueError("a contact sheet needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    size, columns, gap, font_size, caption = _sheet_layout(len(images), cell_w, cell_h, labels is not None, columns)
    sheet = Image.new("RGB", size, ALPHA_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x = gap + (i % columns) * (cell_w + gap)
        y = gap + (i // columns) * (cell_h + caption + gap)
        sheet.paste(to_rgb(image), (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
        if labels is not None:
            draw.text((x + cell_w // 2, y + cell_h + gap // 2), labels[i], fill=(0, 0, 0), anchor="mt",
                      font_size=font_size)
    return sheet


def contact_sheet_size(count: int, width: int, height: int, labelled: bool = True) -> tuple[int, int]:
    """`(width, height)` of the `contact_sheet` of `count` images of `width` x `height` pixels, before it is
    made (to know the room its file needs)."""
    return _sheet_layout(count, width, height, labelled, None)[0]


def _sheet_layout(count: int, cell_w: int, cell_h: int, labelled: bool, columns: int | None):
    """The sheet's size, columns, gap, caption font size and caption height."""
    columns = max(1, min(count, columns if columns else int(np.ceil(np.sqrt(count)))))
    rows = -(-count // columns)
    gap = max(4, cell_w // 32)
    font_size = max(10, min(32, cell_w // 12))
    caption = font_size + gap if labelled else 0
    size = (gap + columns * (cell_w + gap), gap + rows * (cell_h + caption + gap))
    return size, columns, gap, font_size, caption
