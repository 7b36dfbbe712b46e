"""Adapter kinds as objects: one class per kind, found by the name its config gives (`config.kind_name`).

The pipeline holds one kind object per loaded adapter and asks it everything that differs between kinds
(inputs, "no reference", tokens, projection class, checkpoint layout). Adding a kind is one class here plus,
for public weights, one preset row (`docs/architecture.md`).
"""

from __future__ import annotations

from ...errors import ModelFileError
from .base import AdapterKind
from .own import FaceStudioIdentityKind, StyleKind
from .pulid import PuLIDKind
from .public import (
    FaceIDKind,
    FaceIDPlusKind,
    FaceIDPlusV2Kind,
    FaceIDPortraitKind,
    FullFaceKind,
    PlusFaceKind,
    PublicIdentityKind,
)
from .pulid_flux import PuLIDFluxKind

#: Every kind by name.
KINDS: dict[str, type[AdapterKind]] = {}


def register(kind: type[AdapterKind]) -> type[AdapterKind]:
    """Make `kind` reachable by its `name` (usable as a class decorator)."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(f"an adapter kind named {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


for _kind in (FaceStudioIdentityKind, StyleKind, FaceIDKind, FaceIDPlusKind, FaceIDPlusV2Kind, PlusFaceKind,
              FullFaceKind, FaceIDPortraitKind, PuLIDKind, PuLIDFluxKind):
    register(_kind)


def public_identity_kinds() -> dict[str, type[PublicIdentityKind]]:
    """The kinds of public identity checkpoints (what `PublicIdentityConfig.projection` may name)."""
    return {name: kind for name, kind in KINDS.items() if issubclass(kind, PublicIdentityKind)}


def kind_for(config) -> AdapterKind:
    """The kind object of an adapter config.

    Raises:
        ModelFileError: the config names no registered kind.
    """
    name = config.kind_name
    if name not in KINDS:
        raise ModelFileError(f"unknown adapter kind {name!r}; known: {sorted(KINDS)}")
    return KINDS[name](config)


__all__ = ["KINDS", "AdapterKind", "kind_for", "public_identity_kinds", "register"]
