"""benchmarks/personalise.py runs end to end on the tiny models and prints measured ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "personalise.py"


def test_personalise_benchmark_runs_on_tiny_models(faces_dir):
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--passes", "1",
                          "--photo", str(faces_dir / "obama.jpg")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {m.group(1).strip(): float(m.group(2)) for m in
            re.finditer(r"^(facestudio|DreamBooth-LoRA|Textual Inversion)\s.*\s([\d.]+)$", run.stdout, re.M)}
    assert set(rows) == {"facestudio", "DreamBooth-LoRA", "Textual Inversion"}, run.stdout
    assert rows["facestudio"] == 1.0 and rows["DreamBooth-LoRA"] > 1 and rows["Textual Inversion"] > 1
    assert "README_lora.md" in run.stdout and "faster than the faster tuning method" in run.stdout
