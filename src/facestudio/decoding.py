"""The tiny VAE decoder (TAESD / TAESDXL through diffusers' `AutoencoderTiny`): fast final images on a CPU, and a
preview image of every denoising step for the server's progress stream and the page.

TAESD decodes SD 1.x/2.x latents, TAESDXL SDXL's, in a few milliseconds where the full VAE takes seconds on a
CPU, at a small cost in fine detail. It is held as the pipeline component `tiny_vae` (moved by `.to()` with the
others) and chosen per call with `GenerationSettings.decoder = "tiny"`.

Example:
    ```py
    >>> from facestudio.decoding import load_tiny_decoder
    >>> load_tiny_decoder(pipe)                                   # madebyollin/taesd, downloaded once
    >>> image = pipe(settings, preview=lambda step, total, image: image.save(f"step{step}.png")).images[0]
    ```
"""

from __future__ import annotations

import logging
import os

import torch

from .downloads import TINY_DECODERS, tiny_decoder_name
from .errors import ModelFileError, first_line

logger = logging.getLogger(__name__)

#: The decoders a request may name: the base model's own VAE, or the tiny one.
DECODERS = ("full", "tiny")
#: Longest side of a preview image (previews are small: they travel in every progress event).
PREVIEW_SIDE = 256


def tiny_decoder_of(pipe) -> str:
    """The `downloads.TINY_DECODERS` name of the pipeline's tiny decoder (TAESDXL for SDXL, else TAESD)."""
    return tiny_decoder_name(sdxl=hasattr(pipe, "text_encoder_2"))


def load_tiny_decoder(pipe, source: str | os.PathLike | None = None, **hub_kwargs):
    """Load TAESD (SD) or TAESDXL (SDXL) as `pipe.tiny_vae`, on the pipeline's device in its dtype.

    Args:
        source (`str` or `os.PathLike`, *optional*): a folder or hub id of an `AutoencoderTiny`; default the
            TAESD repository of the pipeline's architecture (`tiny_decoder_of`), or an `AutoencoderTiny`.
        hub_kwargs: for `from_pretrained` (`local_files_only`, `cache_dir`, ...).
    """
    from diffusers import AutoencoderTiny

    if getattr(pipe, "unet", None) is None:
        raise ModelFileError(f"the tiny decoder (TAESD) decodes SD 1.5 and SDXL latents; {type(pipe).__name__} "
                             "has no UNet whose latents it reads")
    if isinstance(source, AutoencoderTiny):
        decoder = source
    else:
        source = os.fspath(source) if source is not None else TINY_DECODERS[tiny_decoder_of(pipe)]
        try:
            decoder = AutoencoderTiny.from_pretrained(source, **hub_kwargs)
        except (OSError, ValueError) as error:
            raise ModelFileError(f"tiny decoder {source}: {first_line(error)} (on a machine with a connection: "
                                 f"facestudio download {tiny_decoder_of(pipe)})") from error
    if decoder.config.latent_channels != pipe.unet.config.out_channels:
        raise ModelFileError(f"the tiny decoder reads {decoder.config.latent_channels} latent channels; this UNet "
                             f"makes {pipe.unet.config.out_channels}")
    decoder.to(pipe.unet.device, pipe.unet.dtype).eval()
    pipe.register_modules(tiny_vae=decoder)
    return decoder


@torch.no_grad()
def tiny_decode(decoder, latents: torch.Tensor) -> torch.Tensor:
    """Latents (as the UNet makes them) -> pixels in [-1, 1], by the tiny decoder."""
    return decoder.decode(latents.to(decoder.dtype) / decoder.config.scaling_factor, return_dict=False)[0]


def preview_image(decoder, latents: torch.Tensor):
    """The first image of `latents` as a small PIL image (longest side `PREVIEW_SIDE`)."""
    import PIL.Image

    pixels = tiny_decode(decoder, latents[:1])[0].float().clamp(-1, 1)
    array = ((pixels.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype("uint8")
    image = PIL.Image.fromarray(array)
    scale = PREVIEW_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return image
