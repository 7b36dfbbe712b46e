"""Where each person goes: typed region sources resolved by one function into per-person masks.

```
sources.py       Box, Mask (per person); Split, SceneFaces, StylePeople, Segmented (whole call); parsing, checks
resolve.py       resolve_regions(sources, count, size, ...) -> [N, H, W] masks; choose_source (the automatic one)
scene.py         faces into a given image: its faces, latents kept outside them, pixels pasted back
segmentation.py  MediaPipe selfie segmentation (the `segment` extra), split between people by nearest face
```
"""

from .resolve import choose_source, resolve_regions
from .scene import SceneBlend, SceneEdit, check_scene_faces, scene_targets
from .sources import (CHOICES, Box, Mask, SceneFaces, Segmented, Split, StylePeople, as_call_source, as_region,
                      available_choices, check_sources, source_name)

__all__ = [
    "choose_source", "resolve_regions",
    "SceneBlend", "SceneEdit", "check_scene_faces", "scene_targets",
    "CHOICES", "Box", "Mask", "SceneFaces", "Segmented", "Split", "StylePeople", "as_call_source", "as_region",
    "available_choices", "check_sources", "source_name",
]
