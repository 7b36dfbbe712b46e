"""Images of the public Python API stay what they were before the redesign of the middle of the code."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))
import behaviour  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_scenario_is_pixel_identical_to_the_record(faces_dir):
    recorded = np.load(behaviour.RECORD)
    images = behaviour.render(faces_dir)
    assert sorted(images) == sorted(recorded.files)
    for name, image in images.items():
        assert image.shape == recorded[name].shape, name
        assert np.abs(image.astype(int) - recorded[name]).max() <= 2, name
    # the scenarios differ from each other: a record of one image seven times would prove nothing
    assert len({recorded[n].tobytes() for n in recorded.files}) == len(recorded.files)
