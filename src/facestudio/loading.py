"""One call from names to a ready `FaceStudioPipeline`: base model, identity and style adapters, memory savers.

Shared by `facestudio generate`, `serve` and `eval`, so each accepts the same model names: a local folder, a
hub id, or 'tiny' (random weights built in code: smoke tests only).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ModelFileError

logger = logging.getLogger(__name__)

#: The value of an adapter or base model option that asks for an untrained tiny model.
TINY = "tiny"


def adapter_folder(value: str | Path, kind: str, option: str = "adapter") -> Path:
    """`FOLDER` itself or `FOLDER/<kind>`, whichever holds `facestudio_adapter.json`."""
    from .guidance.layout import CONFIG_NAME

    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ModelFileError(f"{option} {value}: no such folder")
    for candidate in (folder, folder / kind):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise ModelFileError(f"{option} {value}: not a facestudio {kind} adapter (no {CONFIG_NAME} in it or in "
                         f"{kind}/)")


def style_beside(adapter: str | Path | None) -> Path | None:
    """`ADAPTER/style`, the style adapter `save_adapters` writes beside the identity adapter, if there is one."""
    from .guidance.layout import CONFIG_NAME

    if not adapter or str(adapter) == TINY:
        return None
    folder = Path(adapter).expanduser() / "style"
    return folder if (folder / CONFIG_NAME).is_file() else None


def load_generation_pipeline(base_model: str | Path | None, *, adapter: str | Path | None = None,
                             style_adapter: str | Path | None = None, preset: str | None = None,
                             device: str | None = None, cpu_offload: bool = False, vae_tiling: bool = False,
                             face_analyzer=None, arcface_model: str | Path | None = None, with_style: bool = True,
                             speed: str | None = None, speed_weights: str | Path | None = None, **preset_options):
    """The base pipeline with the adapters asked for.

    Args:
        base_model: a diffusers pipeline folder, a hub id, or 'tiny'; with a preset, None takes the preset's.
        adapter: identity adapter: a folder (`FOLDER` or `FOLDER/identity`), 'tiny' (untrained), or None.
        style_adapter: style adapter, the same way; None takes the `style/` beside a folder `adapter`
            (as `save_adapters` and `facestudio train` write them) when `with_style`.
        preset: a public adapter preset (`facestudio.presets`); it names the adapter itself, so `adapter` and
            `style_adapter` must be None. `arcface_model` is its ArcFace file (FaceID presets).
        with_style: load a style adapter when one comes with the preset or the adapter folder.
        face_analyzer: the `FaceAnalyzer` the identity adapter's recogniser must match (made when needed).
        speed: a speed model of `sampling.speed.SPEED_MODELS` loaded beside the adapters (with a preset, None
            takes the preset's own and "none" none); `speed_weights` its local file instead of the hub's.
        preset_options: further options of `presets.load_preset_pipeline` (`local_files`, `pulid_mode`, ...).

    Raises:
        ModelFileError: a folder is not what it should be, or an adapter does not fit the base model.
    """
    from .models import enable_memory_savers, load_base_pipeline
    from .pipeline import FaceStudioPipeline

    if preset is not None:
        from .presets import load_preset_pipeline

        if adapter is not None or style_adapter is not None:
            raise ModelFileError(f"preset {preset} brings its own adapters: drop the adapter options")
        return load_preset_pipeline(preset, base_model=None if base_model is None else str(base_model), device=device,
                                    cpu_offload=cpu_offload, vae_tiling=vae_tiling, face_analyzer=face_analyzer,
                                    with_style=with_style, arcface_model=arcface_model, speed=speed,
                                    speed_weights=speed_weights, **preset_options)
    if preset_options:
        raise ModelFileError(f"{', '.join(preset_options)}: options of a preset, and no preset given")
    if base_model is None:
        raise ModelFileError("no base model given (a folder, a hub id or 'tiny'), and no preset")
    if style_adapter is None and with_style:  # a trained folder holds identity/ and style/ side by side
        style_adapter = style_beside(adapter)
    identity = None if adapter is None or str(adapter) == TINY else adapter_folder(adapter, "identity")
    style = None if style_adapter is None or str(style_adapter) == TINY else adapter_folder(style_adapter, "style")
    if str(base_model) != TINY and Path(str(base_model)).expanduser().is_dir():
        logger.info("loading base model %s", base_model)
    pipe = load_base_pipeline(base_model, FaceStudioPipeline, device=device)
    enable_memory_savers(pipe, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
    cross_dim = pipe.unet.config.cross_attention_dim
    kwargs = {}
    if adapter is not None:
        if identity is None:
            from .faces import FaceAnalyzer
            from .guidance import identity as idg

            face_analyzer = face_analyzer or FaceAnalyzer()
            config = idg.IdentityAdapterConfig(recognizer=face_analyzer.recognizer.name, cross_attention_dim=cross_dim)
            kwargs.update(identity=idg.new_identity_adapter(pipe.unet, config), identity_config=config)
            logger.info("adapter tiny: an untrained identity adapter with random weights; the images will not "
                        "look like the photos (smoke tests only)")
        else:
            kwargs["identity"] = str(identity)
    if style_adapter is not None:
        if style is None:
            from .guidance import style as sty

            encoder = sty.tiny_style_encoder()
            config = sty.StyleAdapterConfig(image_encoder=TINY, image_embed_dim=encoder.embed_dim,
                                            cross_attention_dim=cross_dim)
            kwargs.update(style=sty.new_style_adapter(pipe.unet, config), style_config=config, style_encoder=encoder)
            logger.info("style adapter tiny: an untrained style adapter with random weights (smoke tests only)")
        else:
            kwargs["style"] = str(style)
    if kwargs:
        pipe.load_adapters(face_analyzer=face_analyzer, **kwargs)
    if speed not in (None, "", "none"):
        from .sampling.speed import load_speed_model

        load_speed_model(pipe, speed, weights=speed_weights)
    return pipe
