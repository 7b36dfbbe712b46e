"""The kind interface: what every adapter kind owns, so that the pipeline asks instead of branching.

A kind object is bound to one adapter's config (`kind_for(config)`). It says which diffusers projection the
checkpoint loads as, which checkpoint layout it has (checked key by key before diffusers sees the file),
which CLIP image encoder it reads, and, for identity kinds, how photos become an `Identity`, what "no
reference" is, and how an identity becomes tokens.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch

from ...errors import FaceStudioError, ModelFileError
from ..identity import Identity
from ..public_layouts import Layout


class AdapterKind:
    """One kind of IP-Adapter, bound to its config.

    Subclasses set the class attributes and override the methods their kind needs; `register` (in
    `kinds/__init__.py`) makes a subclass reachable by `name` from configs and presets.

    Attributes:
        name (`str`): the registry name a config names (`config.kind_name`).
        role (`str`): `"identity"` (fed by people's photos) or `"style"` (fed by a style image).
        projection_class (`type`): the diffusers image projection the checkpoint loads as.
        reads_embedding (`bool`): reads a face recogniser's embedding.
        reads_detail (`bool`): reads CLIP hidden states of the aligned face (needs `image_encoder`).
        installs_itself (`bool`): loaded by the kind's `install` (its own attention processors), not by diffusers.
        config: the adapter's config (`IdentityAdapterConfig`, `PublicIdentityConfig`, `StyleAdapterConfig`).
    """

    name: ClassVar[str] = ""
    role: ClassVar[str] = "identity"
    projection_class: ClassVar[type]
    reads_embedding: ClassVar[bool] = False
    reads_detail: ClassVar[bool] = False
    #: False: diffusers' `load_ip_adapter` loads the checkpoint; True: the kind's `install` puts it in the UNet.
    installs_itself: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # ------------------------------------------------------------------ loading

    @property
    def image_encoder(self) -> str:
        """Name of the CLIP vision encoder this kind reads (`load_style_encoder` takes it), `""` for none."""
        return ""

    @property
    def block_scales(self) -> dict | None:
        """Fixed per-block scales (`set_ip_adapter_scale`), None: every layer at 1."""
        return None

    def check_recognizer(self, recognizer: str, source: str) -> None:
        """Refuse a face analyzer whose recogniser this adapter cannot read (default: reads none)."""

    def check_encoder(self, encoder) -> None:
        """Refuse an image encoder that does not fit the adapter (default: the layout check covers it)."""

    def read_checkpoint(self, source, weight_name: str, subfolder: str | None = None, **hub_kwargs) -> dict:
        """The state of a published file `(folder or hub id, weight file, subfolder)`, as `check_layout` reads it
        (default: the nested IP-Adapter `{"image_proj", "ip_adapter"}`)."""
        from ..public_loading import read_checkpoint_file

        return read_checkpoint_file(source, weight_name, subfolder, **hub_kwargs)

    def install(self, unet, state: dict, encoder=None):
        """For a kind that `installs_itself`: put the checked `state` into `unet`; returns its image projection."""
        raise NotImplementedError

    def layout(self, unet, encoder) -> Layout:
        """The checkpoint's flat `{key: shape}` (`public_layouts`) for `unet` and the loaded `encoder`."""
        raise NotImplementedError

    def check_layout(self, state_dict: dict, unet, encoder, source: str) -> None:
        """Compare a nested `{"image_proj", "ip_adapter"}` checkpoint with `layout`, key by key.

        Raises:
            ModelFileError: naming the first key that is missing, unexpected or of another shape.
        """
        expected = self.layout(unet, encoder)
        found = {f"{part}.{key}": tuple(value.shape) for part in ("image_proj", "ip_adapter")
                 for key, value in state_dict.get(part, {}).items()}
        for key, shape in expected.items():
            if key not in found:
                raise ModelFileError(f"adapter {source} does not fit this UNet as a {self.name} adapter: "
                                     f"{key} {list(shape)} is missing")
            if found[key] != shape:
                raise ModelFileError(f"adapter {source} does not fit this UNet as a {self.name} adapter: "
                                     f"{key} has shape {list(found[key])}, expected {list(shape)}")
        extra = [key for key in found if key not in expected]
        if extra:
            raise ModelFileError(f"adapter {source} does not fit this UNet as a {self.name} adapter: "
                                 f"unexpected key {extra[0]} {list(found[extra[0]])}")

    def to_checkpoint(self, projection) -> dict[str, torch.Tensor]:
        """The projection's weights in checkpoint key names (`save_adapters`)."""
        raise FaceStudioError(f"{self.name} adapters are not re-saved: use their published files")

    # ------------------------------------------------------------------ identities (role "identity")

    @property
    def signature(self) -> str:
        """What an `Identity` for this adapter records as its recogniser: the encoders it came from."""
        return ""

    def encode_photos(self, analyzer, encoder, photos: Sequence[np.ndarray], faces: Sequence,
                      name: str = "") -> Identity:
        """One person's `Identity` from RGB arrays and the detected face to use in each."""
        raise NotImplementedError

    def null_identity(self, encoder) -> Identity | None:
        """The "no reference" input the adapter was trained with (None: a kind that takes no identity)."""
        return None

    def tokens(self, projection, identity: Identity) -> torch.Tensor:
        """The `[T, D]` tokens of one identity."""
        raise NotImplementedError

    def check_identity(self, identity: Identity) -> None:
        if identity.recognizer != self.signature:
            raise ValueError(f"identity {identity.name!r} was encoded for {identity.recognizer!r}; this adapter "
                             f"reads {self.signature!r}")


def as_tensor(projection, array) -> torch.Tensor:
    """A float32 array as a tensor on the projection's device and in its dtype."""
    param = next(projection.parameters())
    return torch.from_numpy(np.asarray(array, np.float32)).to(param.device, param.dtype)
