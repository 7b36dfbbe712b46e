"""C2PA content credentials (through c2pa-python): a manifest with one `c2pa.created` action whose
`digitalSourceType` is `trainedAlgorithmicMedia`, signed with the configured key (`signing`) and embedded in the
image file (a `caBX` chunk in PNG, APP11 segments in JPEG, a `C2PA` chunk in WebP)."""

from __future__ import annotations

import io
import json

from ..errors import FaceStudioError, first_line
from .signing import signing_credentials
from .xmp import TRAINED_ALGORITHMIC_MEDIA

_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


def manifest(title: str, mime: str, software: str, version: str) -> dict:
    """The manifest definition for one generated image."""
    return {
        "claim_generator_info": [{"name": software, "version": version}],
        "title": title, "format": mime,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
             "softwareAgent": {"name": software, "version": version}}]}}],
    }


def sign(data: bytes, mime: str, title: str, version: str) -> bytes:
    """`data` (an encoded image of type `mime`) with a signed C2PA manifest embedded."""
    import c2pa

    credentials = signing_credentials()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(credentials.algorithm, credentials.chain,
                                                           credentials.key, None))
        # No thumbnail: c2pa's default embeds a JPEG copy of the image (as large as the image itself here)
        with signer, c2pa.Context.from_dict(_SETTINGS) as context, \
                c2pa.Builder(json.dumps(manifest(title, mime, "facestudio", version)), context=context) as builder:
            out = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as e:
        raise FaceStudioError(f"C2PA signing with {credentials.source} failed: {first_line(e)}") from None
    return out.getvalue()
