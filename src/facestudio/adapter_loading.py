"""Loading, unloading and saving a pipeline's adapters: one path for facestudio's own and the public ones.

Every adapter is read into its `{"image_proj", "ip_adapter"}` state first (a folder `save_adapters` wrote,
a checkpoint dict, or a public file `(folder or hub id, weight file, subfolder)`), its kind object
(`guidance.kinds.kind_for(config)`) checks the recogniser, the image encoder and the layout key by key, and
only then does diffusers' `load_ip_adapter` load them all in one call (through `public_loading`, which keeps
the FaceID LoRAs right). The CLIP image encoders the kinds read become registered pipeline components
(`identity_image_encoder`, `style_image_encoder`), so `.to()`, fp16 and `enable_model_cpu_offload` move them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError
from .faces.analysis import FaceAnalyzer
from .guidance import identity as idg
from .guidance import style as sty
from .guidance.kinds import AdapterKind, kind_for
from .guidance.layout import ip_layers_from_unet, read_checkpoint, read_config, save_checkpoint

#: The pipeline components that hold the CLIP image encoders of the identity and the style adapter.
GUIDANCE_ENCODERS = ("identity_image_encoder", "style_image_encoder")

#: The config class of a folder written by `save_adapters`, by role.
_FOLDER_CONFIGS = {"identity": idg.IdentityAdapterConfig, "style": sty.StyleAdapterConfig}


@dataclass(frozen=True)
class LoadedAdapter:
    """A loaded adapter: its kind object, its position among the pipeline's IP-Adapters, and its "no
    reference" identity (made once at load: it depends only on the adapter and its encoder)."""

    adapter_kind: AdapterKind
    index: int
    null_identity: idg.Identity | None = None

    @property
    def kind(self) -> str:
        """The role, `"identity"` or `"style"` (what the server and training read)."""
        return self.adapter_kind.role

    @property
    def config(self):
        return self.adapter_kind.config


class AdapterLoadingMixin:
    """The adapter half of facestudio's pipelines (mixed in before diffusers' pipeline class)."""

    def _init_guidance(self, identity_image_encoder=None, style_image_encoder=None, tiny_vae=None) -> None:
        """Called from `__init__`: the encoder components (and the tiny decoder, `decoding.py`), and the state set
        by loading (never per call)."""
        self.register_modules(identity_image_encoder=identity_image_encoder, style_image_encoder=style_image_encoder,
                              tiny_vae=tiny_vae)
        #: The detector and recogniser identities are encoded with (made on first use when None).
        self.face_analyzer: FaceAnalyzer | None = None
        self.facestudio_adapters: tuple[LoadedAdapter, ...] = ()
        self._image_processors: dict = {}  # component name -> its CLIPImageProcessor

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, guidance=None, face_analyzer=None, **kwargs):
        """`StableDiffusionPipeline.from_pretrained`, plus `guidance=FOLDER`: the adapters that `save_adapters`
        or `facestudio train` wrote there (`FOLDER/identity`, `FOLDER/style`) are loaded too."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if guidance is not None:
            pipe.load_guidance(guidance, face_analyzer=face_analyzer)
        return pipe

    def load_guidance(self, folder: str | Path, **load_kwargs) -> None:
        """Load the adapters of a guidance folder (`identity/` and/or `style/` beside each other)."""
        folder = Path(folder)
        found = {role: folder / role for role in _FOLDER_CONFIGS if (folder / role).is_dir()}
        if not found:
            raise ModelFileError(f"guidance folder {folder}: no identity/ or style/ adapter in it")
        self.load_adapters(**found, **load_kwargs)

    def load_adapters(self, identity=None, style=None, *, identity_config=None, style_config=None,
                      identity_encoder: sty.StyleEncoder | None = None, style_encoder: sty.StyleEncoder | None = None,
                      face_analyzer: FaceAnalyzer | None = None, **hub_kwargs) -> None:
        """Load an identity adapter and/or a style adapter; the UNet then holds exactly these.

        Args:
            identity, style: each a folder written by `save_adapters` (its config read from it), a checkpoint
                dict `{"image_proj", "ip_adapter"}`, or a public file `(folder or hub id, weight file,
                subfolder or None)` (h94/IP-Adapter, h94/IP-Adapter-FaceID).
            identity_config, style_config: the adapter's config (needed for a dict or a public file):
                `IdentityAdapterConfig`, `PublicIdentityConfig` or `StyleAdapterConfig`.
            identity_encoder, style_encoder (`StyleEncoder`, *optional*): CLIP vision encoders already loaded
                (else loaded by the name the config gives; one encoder serves both when they name the same).
            face_analyzer (`FaceAnalyzer`, *optional*): must carry the recogniser the identity adapter reads.
            hub_kwargs: where public files come from (`local_files_only`, `cache_dir`, `token`, ...).

        Raises:
            ModelFileError: a folder is not a facestudio adapter, an adapter was built for another face
                recogniser, image encoder or UNet, or a checkpoint's layout differs (the first wrong key named).
        """
        from .guidance.public_loading import HUB_ARGUMENTS, load_public_adapters

        unknown = sorted(set(hub_kwargs) - set(HUB_ARGUMENTS))
        if unknown:
            raise TypeError(f"load_adapters got unknown arguments {unknown}; hub arguments: {list(HUB_ARGUMENTS)}")
        if face_analyzer is not None:
            self.face_analyzer = face_analyzer
        given = {"identity": (identity, identity_config, identity_encoder), "style": (style, style_config, style_encoder)}
        wanted = [(role, *entry) for role, entry in given.items() if entry[0] is not None]
        if not wanted:
            raise ValueError("give an identity adapter, a style adapter or both")
        # 1. Read each adapter and let its kind check it, before anything is loaded
        checked, encoders = [], {}
        for role, source, config, encoder in wanted:
            state, config, label = _read(role, source, config, hub_kwargs)
            kind = kind_for(config)
            if kind.role != role:
                raise ModelFileError(f"adapter {label} is a {kind.role} adapter, given as the {role} adapter")
            if config.cross_attention_dim != self.unet.config.cross_attention_dim:
                raise ModelFileError(f"adapter made for a UNet with cross_attention_dim {config.cross_attention_dim}; "
                                     f"this UNet has {self.unet.config.cross_attention_dim}")
            if kind.reads_embedding:  # only these need a face analyzer (made here if none was given)
                kind.check_recognizer(self.get_face_analyzer().recognizer.name, label)
            if kind.image_encoder:
                encoder = encoder or encoders.get(kind.image_encoder) or sty.load_style_encoder(kind.image_encoder)
                encoders[kind.image_encoder] = encoder
                kind.check_encoder(encoder)
            kind.check_layout(state, self.unet, encoder, label)
            checked.append((kind, state, encoder if kind.image_encoder else None))
        # 2. diffusers loads them all in one call (FaceID LoRAs kept right), the encoders become components
        if self.facestudio_adapters:
            self.unload_adapters()
        load_public_adapters(self, [state for _, state, _ in checked], [None] * len(checked))
        self._set_encoders({f"{kind.role}_image_encoder": encoder for kind, _, encoder in checked})
        # 3. The kind objects held, with their "no reference" identities; region processors installed
        adapters = [LoadedAdapter(kind, i, kind.null_identity(encoder)) for i, (kind, _, encoder) in enumerate(checked)]
        for adapter in adapters:  # the layout check makes this hold; a diffusers that sniffs formats otherwise fails here
            found = self.unet.encoder_hid_proj.image_projection_layers[adapter.index]
            if not isinstance(found, adapter.adapter_kind.projection_class):
                self.unload_adapters()
                raise ModelFileError(f"diffusers loaded the {adapter.adapter_kind.name} adapter as a "
                                     f"{type(found).__name__}, not a {adapter.adapter_kind.projection_class.__name__}")
        self._install(adapters)

    def load_public_adapters(self, identity=None, style=None, *, identity_config=None, style_config=None,
                             **kwargs) -> None:
        """`load_adapters` for public files `(folder or hub id, weight file, subfolder or None)`, whose configs
        (`PublicIdentityConfig`, `StyleAdapterConfig`) must be given."""
        if identity is not None and identity_config is None:
            raise ValueError("a public identity adapter needs its PublicIdentityConfig (identity_config=)")
        if style is not None and style_config is None:
            raise ValueError("a public style adapter needs its StyleAdapterConfig (style_config=)")
        self.load_adapters(identity, style, identity_config=identity_config, style_config=style_config, **kwargs)

    def _set_encoders(self, encoders: dict) -> None:
        """Register the adapters' encoders as components, on the UNet's device and in its dtype."""
        for name in GUIDANCE_ENCODERS:
            encoder = encoders.get(name)
            if encoder is not None:
                encoder.model.to(self.unet.device, self.unet.dtype)
                self._image_processors[name] = encoder.processor
            self.register_modules(**{name: None if encoder is None else encoder.model})
        # offload hooks are set per component when offload is enabled: new components need them too
        if getattr(self, "_all_hooks", None):
            self.enable_model_cpu_offload(device=self._offload_device)

    def image_encoder_for(self, role: str) -> sty.StyleEncoder | None:
        """The CLIP encoder the `role` adapter reads (`"identity"` or `"style"`), None when it reads none."""
        name = f"{role}_image_encoder"
        model = getattr(self, name)
        if model is None:
            return None
        processor = self._image_processors.get(name)
        return sty.StyleEncoder(model, processor) if processor is not None else sty.StyleEncoder.for_model(model)

    def _install(self, adapters: list[LoadedAdapter]) -> None:
        """After diffusers loaded the adapters: tokens projected once per call, region processors, and the
        adapters' fixed per-block scales (style kept out of the layout blocks)."""
        from .attention import TokenPassthrough, install_region_processors

        self.unet.encoder_hid_proj = TokenPassthrough(self.unet.encoder_hid_proj)
        install_region_processors(self.unet)
        blocks = [a.adapter_kind.block_scales for a in adapters]
        for adapter, block_scales in zip(adapters, blocks):
            if block_scales and not sty.acting_layers(self.unet, block_scales):
                self.unload_adapters()
                raise ModelFileError(f"the {adapter.kind} adapter's block scales {block_scales} switch it off in every "
                                     "layer of this UNet (block names differ between SD 1.5 and SDXL)")
        if any(blocks):
            self.set_ip_adapter_scale([b or 1.0 for b in blocks])
        self.facestudio_adapters = tuple(adapters)

    def unload_adapters(self) -> None:
        """Remove the adapters, a FaceID checkpoint's LoRA and the image encoders: the base pipeline again."""
        from .guidance.public_loading import unload_public_adapters

        unload_public_adapters(self)
        self._set_encoders({})
        self._image_processors.clear()
        self.facestudio_adapters = ()

    def save_adapters(self, folder: str | Path) -> list[Path]:
        """Write each loaded adapter to `folder/<role>/` in the public IP-Adapter layout plus its config."""
        written = []
        for adapter in self.facestudio_adapters:
            image_proj = adapter.adapter_kind.to_checkpoint(self._projection(adapter))
            written.append(save_checkpoint(Path(folder) / adapter.kind, image_proj,
                                           ip_layers_from_unet(self.unet, adapter.index), adapter.config.to_dict()))
        return written

    def _projection(self, adapter: LoadedAdapter):
        return self.unet.encoder_hid_proj.projection.image_projection_layers[adapter.index]

    def _adapter(self, role: str) -> LoadedAdapter | None:
        return next((a for a in self.facestudio_adapters if a.kind == role), None)

    def get_face_analyzer(self) -> FaceAnalyzer:
        """The pipeline's `FaceAnalyzer` (the one given to `load_adapters`, else shipped models, made on first use)."""
        if self.face_analyzer is None:
            self.face_analyzer = FaceAnalyzer()  # shipped models only; loads lazily
        return self.face_analyzer


def _read(role: str, source, config, hub_kwargs: dict):
    """`(state, config, label)` of one adapter source (see `load_adapters`)."""
    if isinstance(source, dict):
        if config is None:
            raise ValueError(f"a checkpoint dict needs its config ({role}_config=)")
        return source, config, "(checkpoint dict)"
    if isinstance(source, (tuple, list)):
        from .guidance.public_loading import read_checkpoint_file

        if config is None:
            raise ValueError(f"a public {role} adapter needs its config ({role}_config=)")
        folder, weight_name, subfolder = source
        return read_checkpoint_file(folder, weight_name, subfolder, **hub_kwargs), config, f"{folder}/{weight_name}"
    folder = Path(source)
    if not folder.is_dir():
        raise ModelFileError(f"adapter {source}: no such folder")
    config = _FOLDER_CONFIGS[role].from_dict(read_config(folder), source=str(folder))
    return read_checkpoint(folder), config, str(folder)
