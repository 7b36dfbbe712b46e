"""The command line as a user runs it: exit codes, one-line errors, files written."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from facestudio.cli import main
from facestudio.imaging import read_png_metadata


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, faces_dir):
    """The bad files a user will feed the CLI, each with the words its error must contain."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes((faces_dir / "obama.jpg").read_bytes()[:20_000])
    (d / "text.jpg").write_text("definitely not a JPEG\n")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (d / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(d / "noface.png")
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated or corrupt",
        "text.jpg": "not a supported image",
        "tiny.png": "1x1 pixels",
        "huge.png": "too large",
        "noface.png": "no face found",
        "missing.jpg": "no such file",
    }, d


def test_faces_table_and_json(capsys, faces_dir):
    code, out, err = run(capsys, "faces", faces_dir / "obama.jpg")
    assert code == 0 and "obama.jpg: 1 face" in out
    code, out, _ = run(capsys, "faces", faces_dir / "32bit.png", "--json", "--embeddings")
    record = json.loads(out)
    assert code == 0 and record["width"] == 626
    face = record["faces"][0]
    assert face["score"] > 0.8 and set(face["landmarks"]) == {"right_eye", "left_eye", "nose_tip",
                                                                "right_mouth", "left_mouth"}
    assert len(face["embedding"]["vector"]) == 128


def test_draw_writes_a_png_with_metadata(capsys, faces_dir, tmp_path):
    out_png = tmp_path / "drawn.png"
    code, out, _ = run(capsys, "faces", faces_dir / "obama.jpg", "--draw", out_png)
    assert code == 0 and out_png.is_file()
    drawn = np.asarray(Image.open(out_png).convert("RGB"))
    original = np.asarray(Image.open(faces_dir / "obama.jpg").convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any()
    assert read_png_metadata(out_png)["faces"][0]["index"] == 0


def test_several_images_draw_into_a_folder(capsys, faces_dir, tmp_path):
    code, out, _ = run(capsys, "faces", faces_dir / "obama.jpg", faces_dir / "biden.jpg", "--draw", tmp_path / "d")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["biden.faces.png", "obama.faces.png"]


def test_draw_path_is_checked_before_work(capsys, faces_dir, tmp_path):
    code, _, err = run(capsys, "faces", faces_dir / "obama.jpg", "--draw", tmp_path / "out.jpg")
    assert code == 2 and "ending in .png" in err


def test_compare_verdicts(capsys, faces_dir):
    code, out, _ = run(capsys, "compare", faces_dir / "obama.jpg", faces_dir / "obama2.jpg")
    assert code == 0 and out.startswith("same person")
    code, out, _ = run(capsys, "compare", faces_dir / "obama3.jpg", faces_dir / "biden.jpg", "--json")
    result = json.loads(out)
    assert code == 0 and result["same_person"] is False and result["similarity"] < result["threshold"]


def test_compare_face_choice(capsys, faces_dir, tmp_path):
    biden = np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))[:1200, 260:886]  # faces of like size
    pair = np.concatenate([np.asarray(Image.open(faces_dir / "obama2.jpg")), biden], 1)
    Image.fromarray(pair).save(tmp_path / "pair.png")
    code, _, err = run(capsys, "compare", tmp_path / "pair.png", faces_dir / "biden.jpg")
    assert code == 2 and "faces of similar size" in err and "--face" in err
    results = {}
    for n in (0, 1):
        code, out, _ = run(capsys, "compare", tmp_path / "pair.png", faces_dir / "biden.jpg", "--face-a", n, "--json")
        results[n] = json.loads(out)
    assert sorted(r["same_person"] for r in results.values()) == [False, True]
    code, _, err = run(capsys, "compare", tmp_path / "pair.png", faces_dir / "biden.jpg", "--face-a", 7)
    assert code == 2 and "face 7 asked for, but 2" in err


@pytest.mark.parametrize("name", ["empty.jpg", "truncated.jpg", "text.jpg", "tiny.png", "huge.png", "noface.png",
                                  "missing.jpg"])
def test_bad_input_is_one_clear_line(capsys, bad_inputs, name):
    expected, folder = bad_inputs
    code, out, err = run(capsys, "faces", folder / name)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("facestudio: error: ") and name in err
    assert expected[name] in err
    code, out, err = run(capsys, "compare", folder / name, folder / name)
    assert code == 2 and expected[name] in err and "Traceback" not in err


def test_one_bad_image_among_several_is_reported_and_the_rest_done(capsys, bad_inputs, faces_dir):
    _, folder = bad_inputs
    code, out, err = run(capsys, "faces", faces_dir / "obama.jpg", folder / "text.jpg", "--json")
    records = json.loads(out)
    assert code == 2 and len(records) == 2
    assert records[0]["faces"] and "not a supported image" in records[1]["error"]


def test_installed_command_has_no_traceback(bad_inputs):
    """The real entry point, as a subprocess: exit status and stderr as a shell user sees them."""
    exe = shutil.which("facestudio") or pytest.fail("the facestudio command is not installed")
    _, folder = bad_inputs
    proc = subprocess.run([exe, "faces", str(folder / "truncated.jpg")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "truncated" in proc.stderr
    proc = subprocess.run([exe, "faces"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "facestudio.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("facestudio ")


def test_bad_options(capsys, faces_dir):
    code, _, err = run(capsys, "faces", faces_dir / "obama.jpg", "--min-score", "3")
    assert code == 2 and "--min-score" in err


def test_a_missing_extra_is_one_line_naming_it():
    from facestudio.cli import require_extra
    from facestudio.errors import FaceStudioError

    require_extra("eval", "eval", ("json",))  # present: nothing happens
    with pytest.raises(FaceStudioError, match=r"needs the eval extra \(no_such_module_x missing\): pip install "
                                              r"'facestudio\[eval\]'"):
        require_extra("eval", "eval", ("json", "no_such_module_x"))
