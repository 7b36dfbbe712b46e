"""Faults of the machine and odd inputs, through the real CLI: one line naming the path, exit status 2, no
traceback, nothing half-written.

Tests run as root, for whom chmod makes nothing read-only: the read-only and full disks are small tmpfs mounts
(skipped where mounting is not permitted), the file size limit is RLIMIT_FSIZE in a subprocess.
"""

import errno
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file

from conftest import fill_disk
from facestudio.cli import main
import facestudio.errors

FAST = ["--base-model", "tiny", "--adapter", "tiny", "--steps", "1", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """The tiny models gain nothing from threads on a shared machine."""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code, err, *words, lines=1):
    """Exit status 2 and `lines` lines on stderr, the last a facestudio error holding `words`; no traceback."""
    assert code == 2, err
    assert err.count("\n") == lines and err.splitlines()[-1].startswith("facestudio: error: "), err
    assert "Traceback" not in err and "please report it" not in err, err
    for words_ in words:
        assert str(words_) in err, err


def full_disk(tmpfs, name="full"):
    """A tmpfs with every byte taken by `filler`."""
    folder = tmpfs(name, "size=256k")
    fill_disk(folder)
    return folder


def checkpoint(path, **extra):
    state = {"image_proj": {"proj.weight": torch.randn(64, 64)}, "ip_adapter": {"1.to_k_ip.weight": torch.randn(4, 4)}}
    state["image_proj"].update(extra)
    torch.save(state, path)
    return path


# --- the full, read-only or blocked disk ----------------------------------------------------------------


def test_faces_draw_onto_a_read_only_or_full_disk_or_through_a_file(capsys, faces_dir, tmpfs, tmp_path):
    photo = faces_dir / "obama.jpg"
    read_only, full = tmpfs("ro", "ro,size=64k"), full_disk(tmpfs)
    code, _, err = run(capsys, "faces", photo, "--draw", read_only / "x.png")
    assert_clean(code, err, f"cannot write {read_only / 'x.png'}", "read-only file system")
    code, _, err = run(capsys, "faces", photo, "--draw", full / "x.png")
    assert_clean(code, err, f"cannot write {full / 'x.png'}", "no space left", "free some space")
    assert os.listdir(full) == ["filler"]  # no temporary file left
    code, _, err = run(capsys, "faces", photo, faces_dir / "biden.jpg", "--draw", full / "drawings")
    assert_clean(code, err, f"cannot write {full / 'drawings' / 'obama.faces.png'}", "no space left")
    assert os.listdir(full) == ["filler"]  # nor the folder the run made for its drawings
    (tmp_path / "file").write_text("in the way")
    code, _, err = run(capsys, "faces", photo, "--draw", tmp_path / "file" / "x.png")
    assert_clean(code, err, tmp_path / "file", "in the way")


def test_convert_onto_a_read_only_or_full_disk_or_a_folder(capsys, tmpfs, tmp_path):
    source = checkpoint(tmp_path / "ip.bin")
    read_only, full = tmpfs("ro", "ro,size=64k"), full_disk(tmpfs)
    code, _, err = run(capsys, "convert", source, "--output", read_only / "ip.safetensors")
    assert_clean(code, err, f"cannot write {read_only / 'ip.safetensors'}", "read-only")
    code, _, err = run(capsys, "convert", source, "--output", full / "ip.safetensors")
    assert_clean(code, err, f"cannot write {full / 'ip.safetensors'}", "no space left")
    assert os.listdir(full) == ["filler"]
    for folder in (tmp_path / "empty.safetensors", tmp_path / "full.safetensors"):
        folder.mkdir()
    (tmp_path / "full.safetensors" / "kept").write_text("kept")
    for folder in (tmp_path / "empty.safetensors", tmp_path / "full.safetensors"):
        code, _, err = run(capsys, "convert", source, "--output", folder, "--force")
        assert_clean(code, err, folder, "is a folder")
    assert os.listdir(tmp_path / "full.safetensors") == ["kept"]
    code, _, err = run(capsys, "convert", tmp_path)
    assert_clean(code, err, tmp_path, "is a folder")
    assert "no such file" not in err


def test_generate_refuses_a_disk_without_room_before_loading_models(capsys, faces_dir, tmpfs):
    full, read_only = full_disk(tmpfs), tmpfs("ro", "ro,size=64k")
    code, _, err = run(capsys, "generate", "--prompt", "x", "--identity", faces_dir / "obama.jpg", *FAST,
                       "--num-images", 2, "--output", full / "out")
    assert_clean(code, err, f"--output {full / 'out'}", "not enough room for 2 images of 64x64",
                 "choose another --output")
    assert os.listdir(full) == ["filler"]
    code, _, err = run(capsys, "generate", "--prompt", "x", *FAST, "--output", read_only / "out")
    assert_clean(code, err, read_only, "not writable")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, faces_dir):
    """A face cache of one photo at 64 pixels, made by `facestudio prepare`."""
    photos, out = tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("cache") / "cache"
    shutil.copy(faces_dir / "obama.jpg", photos)
    assert main(["prepare", str(photos), str(out), "--resolution", "64"]) == 0
    return out


def test_train_refuses_a_disk_without_room_for_its_checkpoints(capsys, cache, tmpfs):
    full = full_disk(tmpfs)
    code, _, err = run(capsys, "train", cache, "--output", full / "run", "--max-steps", 3, "--checkpoint-every", 1,
                       "--sample-every", -1)
    assert_clean(code, err, f"--output {full / 'run'}", "not enough room for 3 checkpoints")
    assert os.listdir(full) == ["filler"]


def test_train_resuming_a_damaged_checkpoint_says_so(capsys, cache, tmp_path):
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "training_state.json").write_text(json.dumps({"step": 1, "losses": [1.0], "settings": {}}))
    (checkpoint / "model.safetensors").write_bytes(b"damaged")
    code, _, err = run(capsys, "train", cache, "--output", tmp_path / "run", "--max-steps", 2, "--sample-every", -1,
                       "--resume", checkpoint)
    assert_clean(code, err, f"--resume {checkpoint}: damaged checkpoint")


def test_generate_failing_at_its_first_file_leaves_no_folder(capsys, faces_dir, tmpfs):
    """A tmpfs with room for the bytes but no inode left once the output folder is made: the byte check
    passes, the first file creation fails."""
    first = tmpfs("first", "size=4m,nr_inodes=2")  # its root and the output folder
    code, _, err = run(capsys, "generate", "--prompt", "x", "--identity", faces_dir / "obama.jpg", *FAST,
                       "--output", first / "out")
    assert_clean(code, err, f"cannot write {first / 'out' / '000-seed0.png'}", "no space left")
    assert os.listdir(first) == []  # the folder the run made is gone again


def _cli(*argv, fsize=None):
    """The installed entry point in a subprocess with every library warning switched on, under a file size
    limit if given (SIGXFSZ ignored, so a write past it fails with EFBIG instead of killing the process)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, "-m", "facestudio.cli", *map(str, argv)], capture_output=True, text=True,
                          preexec_fn=limit if fsize else None, env={**os.environ, "PYTHONWARNINGS": "always"},
                          timeout=300)


def test_generate_past_the_file_size_limit_keeps_the_finished_images(faces_dir, tmp_path):
    """16 KiB holds a 64x64 image (at most 12 kB of pixels and its settings), not the contact sheet of two."""
    out = tmp_path / "out"
    proc = _cli("generate", "--prompt", "x", "--identity", faces_dir / "obama.jpg", *FAST, "--num-images", 2,
                "--output", out, fsize=16 * 1024)
    assert_clean(proc.returncode, proc.stderr, f"cannot write {out / 'contact-sheet.png'}", "file too large",
                 "ulimit -f", "2 of 2 images were written", lines=5)  # with the note about the tiny adapter
    assert sorted(os.listdir(out)) == ["000-seed0.png", "001-seed1.png"]  # whole, nothing half-written beside
    assert all(Image.open(out / name).size == (64, 64) for name in os.listdir(out))
    assert "Warning" not in proc.stderr


def test_library_warnings_only_with_debug(tmp_path):
    """torch warns about a pickle's protocol while refusing it: a library warning on a real path."""
    with open(tmp_path / "plain.bin", "wb") as f:
        pickle.dump({"image_proj": {}, "ip_adapter": {}}, f, protocol=4)
    proc = _cli("convert", tmp_path / "plain.bin")
    assert_clean(proc.returncode, proc.stderr, "refused for safety")
    assert "Warning" not in proc.stderr
    proc = _cli("--debug", "convert", tmp_path / "plain.bin")
    assert proc.returncode == 2 and "UserWarning" in proc.stderr


def test_a_reader_that_leaves_early_is_no_error(faces_dir):
    """`facestudio faces ... | head -c 1`: stdout's pipe is closed before the table is written."""
    proc = subprocess.Popen([sys.executable, "-m", "facestudio.cli", "faces", str(faces_dir / "obama.jpg")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == "", err


# --- odd files and options: never an internal error -----------------------------------------------------


class _Code:
    """A pickle that names a function: weights_only refuses it."""

    def __reduce__(self):
        return (print, ("ran",))


def test_a_pickle_with_code_is_refused_without_torchs_unsafe_advice(capsys, tmp_path):
    torch.save({"image_proj": {"x": _Code()}, "ip_adapter": {}}, tmp_path / "evil.bin")
    code, out, err = run(capsys, "convert", tmp_path / "evil.bin")
    assert_clean(code, err, "holds code or objects besides tensors", "refused for safety")
    assert "weights_only" not in err and "\x1b" not in err and "ran" not in out


def test_tied_tensors_are_stored_once_each(capsys, tmp_path):
    """safetensors refuses tensors that share memory; a checkpoint with tied weights still converts."""
    weight = torch.randn(4, 4)
    torch.save({"image_proj": {"a": weight, "b": weight, "row": weight[1]}, "ip_adapter": {}}, tmp_path / "t.bin")
    code, out, err = run(capsys, "convert", tmp_path / "t.bin")
    assert code == 0, err
    flat = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(flat["image_proj.a"], weight) and torch.equal(flat["image_proj.b"], weight)
    assert torch.equal(flat["image_proj.row"], weight[1])


def _png_with_metadata(path, text):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("facestudio", text)
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory, faces_dir):
    """Files a user can hand the CLI that are valid in form but not in content."""
    d = tmp_path_factory.mktemp("odd")
    for name, text in {"list": "[1, 2]", "null": "null", "string": '"x"'}.items():
        (d / f"adapter-{name}").mkdir()
        (d / f"adapter-{name}" / "facestudio_adapter.json").write_text(text)
    torch.save({1: torch.zeros(1), "image_proj": {}}, d / "mixed-keys.bin")
    torch.save({"image_proj": {"s": torch.zeros(3, 3).to_sparse()}, "ip_adapter": {}}, d / "sparse.bin")
    torch.save({"image_proj": {1: torch.zeros(1), "1": torch.zeros(1)}, "ip_adapter": {}}, d / "twice.bin")
    for name, manifest in {"list": [1], "no-samples": {"format": "facestudio-face-cache", "version": 1,
                                                        "settings": {}}}.items():
        (d / f"cache-{name}").mkdir()
        (d / f"cache-{name}" / "manifest.json").write_text(json.dumps(manifest))
    for name, text in {"broken": "{", "list": "[1]"}.items():
        (d / f"state-{name}").mkdir()
        (d / f"state-{name}" / "training_state.json").write_text(text)
    spec = {"base_model": "tiny", "adapter": "tiny", "identities": {"a": {"photos": ["a.jpg"]}}, "prompts": ["x"]}
    specs = {"list.json": "[1, 2]", "prompt.json": json.dumps({**spec, "prompts": "a photo"}),
             "steps.json": json.dumps({**spec, "steps": "many"}),
             "baselines.json": json.dumps({**spec, "baselines": 5}), "identities.json": json.dumps({**spec, "identities": [1]}),
             "photos.toml": 'base_model = "tiny"\nadapter = "tiny"\nprompts = ["x"]\n[identities.a]\nphotos = 5\n'}
    for name, text in specs.items():
        (d / name).write_text(text)
    (d / "images").mkdir()
    for name, text in {"list": "[1]", "number": "5", "types": '{"identities": 5}'}.items():
        _png_with_metadata(d / "images" / f"{name}.png", text)
    return d


#: command line (with {odd} and {faces} filled in), the words its one error line must hold
ODD = {
    "adapter config a list": (["generate", "--prompt", "x", "--identity", "{faces}/obama.jpg", "--base-model", "tiny",
                               "--adapter", "{odd}/adapter-list"], "a JSON object of settings expected, found list"),
    "adapter config null": (["generate", "--prompt", "x", "--identity", "{faces}/obama.jpg", "--base-model", "tiny",
                             "--adapter", "{odd}/adapter-null"], "found NoneType"),
    "adapter config a string": (["generate", "--prompt", "x", "--identity", "{faces}/obama.jpg", "--base-model",
                                 "tiny", "--adapter", "{odd}/adapter-string"], "found str"),
    "checkpoint keys int and str": (["convert", "{odd}/mixed-keys.bin"], "not an IP-Adapter checkpoint"),
    "checkpoint sparse tensor": (["convert", "{odd}/sparse.bin"], "not a dense tensor"),
    "checkpoint key twice": (["convert", "{odd}/twice.bin"], "appears twice"),
    "prepare into a manifest list": (["prepare", "{faces}", "{odd}/cache-list"], "a JSON object expected"),
    "prepare into a damaged manifest": (["prepare", "{faces}", "{odd}/cache-no-samples"], "damaged manifest"),
    "train a manifest list": (["train", "{odd}/cache-list", "--output", "{out}"], "a JSON object expected"),
    "train a damaged manifest": (["train", "{odd}/cache-no-samples", "--output", "{out}"], "damaged manifest"),
    "train learning rate nan": (["train", "{odd}/cache-list", "--output", "{out}", "--learning-rate", "nan"],
                                "learning rate"),
    "train unknown scheduler": (["train", "{odd}/cache-list", "--output", "{out}", "--lr-scheduler", "bogus"],
                                "lr scheduler 'bogus'"),
    "train negative seed": (["train", "{odd}/cache-list", "--output", "{out}", "--seed", "-1"], "seed -1"),
    "train resume unreadable state": (["train", "{odd}/cache-list", "--output", "{out}", "--resume",
                                       "{odd}/state-broken"], "training_state.json: unreadable"),
    "train resume state a list": (["train", "{odd}/cache-list", "--output", "{out}", "--resume", "{odd}/state-list"],
                                  "training_state.json: damaged"),
    "train fp16 on the cpu": (["train", "{odd}/cache-list", "--output", "{out}", "--cpu", "--mixed-precision",
                               "fp16"], "needs a GPU"),
    "eval spec a list": (["eval", "--spec", "{odd}/list.json"], "a table of settings expected, found list"),
    "eval spec prompts a string": (["eval", "--spec", "{odd}/prompt.json"], "prompts must be a non-empty list"),
    "eval spec steps a string": (["eval", "--spec", "{odd}/steps.json"], "steps must be an integer"),
    "eval spec identities a list": (["eval", "--spec", "{odd}/identities.json"], "identities must be a table"),
    "eval spec photos a number": (["eval", "--spec", "{odd}/photos.toml"], "photos must be a list of strings"),
    "eval spec baselines a number": (["eval", "--spec", "{odd}/baselines.json"], "baselines must be a list"),
    "eval images with odd metadata": (["eval", "{odd}/images", "--output", "{out}"], "nothing could be evaluated"),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_input_is_an_input_error_never_please_report_it(capsys, odd_files, faces_dir, tmp_path, case):
    argv, words = ODD[case]
    argv = [a.format(odd=odd_files, faces=faces_dir, out=tmp_path / "out") for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert "please report it" not in out + err and "Traceback" not in err
    assert err.splitlines()[-1].startswith("facestudio: error: ") and words in err.splitlines()[-1], err


def test_an_os_error_without_a_path_still_says_what_to_do():
    assert facestudio.errors.os_error_message(OSError(errno.ENOSPC, "No space left on device")) == \
        "no space left on the device; free some space or write elsewhere"
    assert facestudio.errors.os_error_message(OSError(errno.EMLINK, "Too many links", "/x")) == "/x: Too many links"
