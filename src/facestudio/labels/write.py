"""One labelled image file from an image and its metadata: everything `labels` writes, in one place.

PNG: the metadata as JSON (iTXt `facestudio`, what facestudio reads back), a plain `AI-generated` text chunk,
A1111's `parameters` text, the XMP packet with the digital source type, and signed C2PA content credentials.
JPEG and WebP: the XMP packet, `parameters` in EXIF UserComment (where A1111 puts it) and the credentials.
"""

from __future__ import annotations

import datetime
import io
import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from .parameters import a1111_parameters
from .xmp import PNG_XMP_KEY, xmp_packet

#: File suffix -> (PIL format, MIME type) of the formats written with labels.
FORMATS = {".png": ("PNG", "image/png"), ".jpg": ("JPEG", "image/jpeg"), ".jpeg": ("JPEG", "image/jpeg"),
           ".webp": ("WEBP", "image/webp")}
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def encode_labelled(image: Image.Image, metadata: dict, suffix: str = ".png", *, title: str = "image.png",
                    credentials: bool = True) -> bytes:
    """The encoded file: `image` in the format of `suffix`, with every label of `metadata` (see module)."""
    from .. import __version__

    fmt, mime = FORMATS[suffix.lower()]
    software = metadata.get("software") or f"facestudio {__version__}"
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    xmp = xmp_packet(software, created)
    parameters = a1111_parameters(metadata)
    out = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("facestudio", json.dumps(metadata, sort_keys=True))
        info.add_text("AI-generated", "true")
        info.add_text("parameters", parameters)  # tEXt as A1111 writes it (iTXt when not Latin-1)
        info.add_itxt(PNG_XMP_KEY, xmp)
        image.save(out, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
        rgb = image.convert("RGB") if fmt == "JPEG" else image
        rgb.save(out, format=fmt, exif=exif, xmp=xmp.encode(), quality=95)
    data = out.getvalue()
    if credentials:
        from .credentials import sign

        data = sign(data, mime, title, __version__)
    return data


def save_labelled(image: Image.Image, path: str | os.PathLike, metadata: dict, *, overwrite: bool = True,
                  mode: int | None = None) -> Path:
    """Write `image` to `path` (.png, .jpg, .webp) with its labels, atomically (see `files.write_atomically`)."""
    from ..errors import FaceStudioError
    from ..files import write_atomically

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise FaceStudioError(f"{path}: labelled images are written as {', '.join(FORMATS)}; not "
                              f"{path.suffix or 'without a suffix'}")
    data = encode_labelled(image, metadata, path.suffix, title=path.name)
    return write_atomically(path, data, overwrite=overwrite, mode=mode)
