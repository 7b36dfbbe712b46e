"""The images facestudio made before the middle of the code was redesigned (issue 15), one per scenario.

`python tests/support/behaviour.py` records them into `tests/data/behaviour_before_redesign.npz`; the test
`tests/test_behaviour_kept.py` renders every scenario again and compares (max difference <= 2 of 255). Each
scenario goes through the public Python API only (photos in, images out), so any refactoring of what sits
between keeps its images or shows where it does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RECORD = Path(__file__).resolve().parents[1] / "data" / "behaviour_before_redesign.npz"
SIZE = dict(height=64, width=64, num_inference_steps=2)


def pipelines():
    """A tiny SD pipeline with facestudio's identity adapter, and one with its style adapter beside it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import tiny_facestudio_pipeline

    return [tiny_facestudio_pipeline(style) for style in (False, True)]


def scenarios(faces: Path) -> dict:
    """name -> (uses the style pipeline, the call's keyword arguments)."""
    from facestudio.pipeline import IdentityInput

    def person(*names, **kw):
        return IdentityInput(photos=tuple(faces / n for n in names), name=names[0].split(".")[0], **kw)

    obama, biden = person("obama.jpg"), person("biden.jpg")
    scene = Image.open(faces / "obama2.jpg").convert("RGB").resize((120, 232))
    return {
        "one_identity": (False, dict(identities=[obama])),
        "two_in_boxes": (False, dict(identities=[person("obama.jpg", region=(0, 0, 32, 64)),
                                                 person("biden.jpg", region=(32, 0, 64, 64), strength=0.5)])),
        "mix_0.7_0.3": (False, dict(identities=[obama, biden], mix=[0.7, 0.3])),
        "style_image": (True, dict(identities=[obama], style_image=Image.new("RGB", (64, 64), (200, 30, 30)),
                                   style_strength=2.0)),
        "text_5_reference_2": (False, dict(identities=[obama], text_guidance_scale=5.0,
                                           reference_guidance_scale=2.0)),
        "two_pooled_photos": (False, dict(identities=[person("obama.jpg", "obama3.jpg")])),
        "face_into_scene": (False, dict(identities=[biden], scene_image=scene, height=232, width=120)),
    }


def render(faces: Path) -> dict[str, np.ndarray]:
    """Every scenario's image as uint8 `[H, W, 3]`, seed 0."""
    plain, styled = pipelines()
    images = {}
    for name, (with_style, kwargs) in scenarios(faces).items():
        args = {**SIZE, **kwargs}
        out = (styled if with_style else plain)("a portrait photo", generator=torch.Generator().manual_seed(0),
                                                output_type="np", **args)
        images[name] = np.round(out.images[0] * 255).astype(np.uint8)
    return images


if __name__ == "__main__":
    faces = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "data" / "faces"
    images = render(faces)
    np.savez_compressed(RECORD, **images)
    print(f"{RECORD}: {', '.join(f'{k} {v.shape}' for k, v in images.items())}")
