"""The GPU benchmarks run end to end on the tiny models (`--tiny`) and print what they measure, so that the one
run a GPU machine gets does not fail on a script that has drifted from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: script -> (its extra arguments, the numbers it must print, each > 0)
PRINTS = {
    "first_image.py": ([], [r"4-step / 25-step photo-to-PNG time: ([\d.]+)"]),
    "flux_identity.py": (["--warmup", "1", "--repeats", "2"], [r"two identities [\d.]+ s, ratio ([\d.]+)"]),
    "sdxl_identity.py": ([], [r"two identities / none: ([\d.]+)", r"photos to a two-person image: ([\d.]+) s",
                              r"the two images differ by up to (\d+) of 255"]),
}


@pytest.mark.parametrize("script", sorted(PRINTS))
def test_benchmark_runs_on_the_tiny_models(script, faces_dir):
    extra, patterns = PRINTS[script]
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny", *extra], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "FACESTUDIO_TEST_FACES": str(faces_dir)})
    assert run.returncode == 0, run.stderr[-2000:]
    for pattern in patterns:
        found = re.search(pattern, run.stdout)
        assert found and float(found.group(1)) > 0, (pattern, run.stdout)
