"""The oracle: ToTheBeginning/PuLID's reference FLUX + PuLID cross-attention code and facestudio's transformer
give the same output for one step on the same random weights in the published layouts (`support/
pulid_flux_reference.py`). Skipped, with the reason, where the reference or its einops is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))
import pulid_flux_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_transformer_step_matches_reference_pulid_flux(tmp_path):
    found, reason = pulid_flux_reference.reference_or_reason(tmp_path)
    if found is None:
        pytest.skip(reason)
    diffs = pulid_flux_reference.compare(found)
    assert diffs["no identity"] <= 1e-4  # diffusers' conversion of BFL's layout: the same FLUX
    assert diffs["one identity"] <= 1e-4  # PuLID's cross-attentions after double blocks 0, 2 and single 0, 4
    assert diffs["identity effect"] > 0.1  # the identity does act: the comparison could fail
