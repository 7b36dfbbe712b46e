"""The image encoders run on the pipeline's device in its dtype, once per identity (all its photos in one batch),
never again per image: counted with a forward hook on the real (tiny) CLIP encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facestudio.guidance import identity as idg
from facestudio.pipeline import IdentityInput
from test_fewstep_fronts import plus_pipe

pytest.importorskip("peft", minversion="0.17")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")

PHOTOS = ("obama.jpg", "obama2.jpg", "biden.jpg")


def counting(module, calls: list):
    return module.register_forward_pre_hook(lambda m, args, kwargs: calls.append(
        (kwargs.get("pixel_values", args[0] if args else None))), with_kwargs=True)


def test_an_identity_costs_one_encoder_run_and_images_none(tmp_path, arcface_analyzer, faces_dir):
    pipe = plus_pipe(tmp_path, arcface_analyzer)
    photos = [faces_dir / p for p in PHOTOS if (faces_dir / p).exists()]
    assert len(photos) >= 2
    calls = []
    hook = counting(pipe.identity_image_encoder, calls)
    try:
        person = pipe.encode_identities([IdentityInput(photos=tuple(photos), name="p")], None)[0]
        assert len(calls) == 1 and calls[0].shape[0] == len(photos)  # one batch for all the photos
        for seed in (0, 1):  # two images of that person: no encoder work at all
            pipe("a photo", identities=[IdentityInput(identity=person)], height=64, width=64,
                 num_inference_steps=1, generator=torch.Generator().manual_seed(seed))
        assert len(calls) == 1
    finally:
        hook.remove()
    # the same identity as encoding each photo alone and pooling
    alone = [pipe.encode_identities([IdentityInput(photos=(p,), name="p")], None)[0] for p in photos]
    pooled = idg.pool(alone, name="p")
    assert np.abs(pooled.detail - person.detail).max() <= 1e-5
    assert np.abs(pooled.embedding - person.embedding).max() <= 1e-5


def test_the_encoder_runs_in_the_pipelines_dtype(tmp_path, arcface_analyzer, faces_dir):
    pipe = plus_pipe(tmp_path, arcface_analyzer)
    pipe.to(dtype=torch.bfloat16)
    assert pipe.identity_image_encoder.dtype == torch.bfloat16 == pipe.unet.dtype
    calls = []
    hook = counting(pipe.identity_image_encoder, calls)
    try:
        pipe.encode_identities([IdentityInput(photos=(faces_dir / "obama.jpg",))], None)
    finally:
        hook.remove()
    assert calls[0].dtype == torch.bfloat16 and calls[0].device == pipe.unet.device
