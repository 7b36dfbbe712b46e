"""Mistakes on the command line are answered before torch, diffusers or transformers is imported.

Each case runs the real `main()` in a fresh interpreter and reports which heavy modules were imported by
the time the error came back (`sys.modules`); no clock is involved. benchmarks/cli_errors.py times them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers", "onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "examples" / "obama.jpg")

CASES = {
    "bad width": (["generate", "--prompt", "x", "--base-model", "tiny", "--width", "65"], "--width 65"),
    "missing photo": (["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny",
                       "--identity", "missing.jpg"], "missing.jpg: no such file"),
    "missing photo, preset": (["generate", "--preset", "faceid-plusv2-sd15", "--prompt", "x", "--identity",
                               "missing.jpg"], "missing.jpg: no such file"),
    "photo without a face, preset": (["generate", "--preset", "faceid-plusv2-sd15", "--prompt", "x", "--identity",
                                      str(ROOT / "src/facestudio/faces/weights/README.md")], "README.md"),
    "missing style image": (["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny",
                             "--style-adapter", "tiny", "--identity", PHOTO, "--style", "missing.png"],
                            "missing.png: no such file"),
    "missing scene": (["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny", "--identity", PHOTO,
                       "--scene", "missing.png"],
                      "missing.png: no such file"),
    "bad region": (["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny", "--identity", PHOTO,
                    "--region", "0,0,900,900"], "--region"),
    "mix, missing photo": (["mix", PHOTO, "missing.jpg", "--base-model", "tiny", "--adapter", "tiny"],
                           "missing.jpg: no such file"),
    "serve, bad port": (["serve", "--base-model", "tiny", "--port", "70000"], "--port 70000"),
    "download, unknown name": (["download", "nope"], "not a preset"),
    "preset offline, files missing": (["generate", "--preset", "faceid-plusv2-sd15", "--prompt", "x", "--identity",
                                       PHOTO], "run: facestudio download faceid-plusv2-sd15"),
    "download offline": (["download", "faceid-plusv2-sd15"], "run: facestudio download faceid-plusv2-sd15"),
}

PROBE = """
import contextlib, io, json, sys
from facestudio.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(json.loads(sys.argv[1]))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))
print(json.dumps({"code": code, "err": err.getvalue(), "heavy": heavy}))
"""


@pytest.mark.parametrize("case", CASES)
def test_error_comes_before_the_heavy_imports(case, tmp_path):
    argv, message = CASES[case]
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                              "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["code"] == 2 and message in result["err"] and result["err"].count("error:") == 1, result
    assert result["heavy"] == [], f"imported before the error: {result['heavy'][:5]}"
