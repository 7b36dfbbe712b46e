"""`facestudio generate` and `facestudio mix` as a user runs them: files, metadata, seeds, one-line errors.

Everything runs on the tiny random base model with an untrained ("tiny") adapter at 64x64 and 2 steps: the
tests check the command's plumbing, not image quality.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import assert_labelled
from facestudio.cli import main
from facestudio.imaging import TRAINED_ALGORITHMIC_MEDIA, read_png_metadata

FAST = ["--base-model", "tiny", "--adapter", "tiny", "--steps", "2", "--width", "64", "--height", "64"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The 64x64 tiny model gains nothing from a second thread, and OpenMP's waiting threads make it several
    times slower when another process holds a core: run these tests on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bad_photos(tmp_path_factory, faces_dir):
    """A photo without a face, and one with two faces of similar size."""
    d = tmp_path_factory.mktemp("bad-photos")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(d / "noise.png")
    biden = np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))[:1200, 260:886]  # faces of like size
    pair = np.concatenate([np.asarray(Image.open(faces_dir / "obama2.jpg").convert("RGB")), biden], 1)
    Image.fromarray(pair).save(d / "pair.png")
    return d


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    """An identity adapter for the tiny UNet, written by `FaceStudioPipeline.save_adapters`."""
    from facestudio.guidance import identity as idg
    from facestudio.models import load_base_pipeline
    from facestudio.pipeline import FaceStudioPipeline

    pipe = load_base_pipeline("tiny", FaceStudioPipeline, device="cpu")
    config = idg.IdentityAdapterConfig(cross_attention_dim=pipe.unet.config.cross_attention_dim)
    pipe.load_adapters(identity=idg.new_identity_adapter(pipe.unet, config, seed=1), identity_config=config)
    folder = tmp_path_factory.mktemp("adapters")
    pipe.save_adapters(folder)
    assert (folder / "identity" / "facestudio_adapter.json").is_file()
    return folder


# --- images and metadata ------------------------------------------------------------------------------


def test_generate_writes_a_png_with_settings_and_ai_label(capsys, faces_dir, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "generate", "--prompt", "an astronaut, photo", "--negative-prompt", "blurry",
                         "--identity", faces_dir / "obama.jpg", "--seed", 7, *FAST, "--output", out_dir)
    assert code == 0, err
    path = out_dir / "000-seed7.png"
    assert out.split() == [str(path)] and sorted(os.listdir(out_dir)) == ["000-seed7.png"]
    assert pixels(path).shape == (64, 64, 3)
    meta = read_png_metadata(path)
    assert meta["prompt"] == "an astronaut, photo" and meta["negative_prompt"] == "blurry"
    assert meta["seed"] == 7 and meta["steps"] == 2 and (meta["width"], meta["height"]) == (64, 64)
    assert meta["ai_generated"] is True and meta["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert meta["base_model"] == "tiny" and meta["adapters"] == [{"kind": "identity", "type": "facestudio",
                                                                  "source": "tiny"}]
    assert meta["identities"][0]["photos"] == ["obama.jpg"]  # file names, not the user's folders
    assert meta["text_guidance_scale"] == meta["reference_guidance_scale"] == 7.5
    assert meta["facestudio_version"]
    # the labels standard tools read: exiftool's XMP digital source type, C2PA, A1111's parameters
    assert_labelled(path)
    assert Image.open(path).info["parameters"].startswith("an astronaut, photo\nNegative prompt: blurry\nSteps: 2, "
                                                          "Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, "
                                                          "Seed: 7, Size: 64x64, Model: tiny, ")


def test_image_i_of_a_run_is_the_single_run_with_seed_plus_i(capsys, faces_dir, tmp_path):
    out_dir = tmp_path / "out"
    args = ["generate", "--prompt", "a portrait", "--identity", faces_dir / "obama.jpg", *FAST, "--output", out_dir]
    code, out, err = run(capsys, *args, "--num-images", 2, "--seed", 3)
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["000-seed3.png", "001-seed4.png", "contact-sheet.png"]
    first, second = pixels(out_dir / "000-seed3.png"), pixels(out_dir / "001-seed4.png")
    assert np.abs(first.astype(int) - second).max() > 0  # different seeds, different images
    sheet = read_png_metadata(out_dir / "contact-sheet.png")
    assert sheet["ai_generated"] is True and sheet["contact_sheet_of"] == ["000-seed3.png", "001-seed4.png"]
    with Image.open(out_dir / "contact-sheet.png") as image:
        assert image.width > 2 * 64
    before = {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)}

    # The single run with seed 4, into the same folder: a new number, nothing overwritten, the same pixels.
    code, out, err = run(capsys, *args, "--seed", 4)
    assert code == 0, err
    assert out.split() == [str(out_dir / "002-seed4.png")]
    assert {name: (out_dir / name).read_bytes() for name in before} == before
    np.testing.assert_array_equal(pixels(out_dir / "002-seed4.png"), second)


def test_mix_blends_two_people_with_the_ratio_as_b_share(capsys, faces_dir, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "mix", faces_dir / "obama.jpg", faces_dir / "biden.jpg", "--ratio", 0.3, *FAST,
                         "--output", out_dir)
    assert code == 0, err
    meta = read_png_metadata(out_dir / "000-seed0.png")
    assert meta["mix"] == [0.7, 0.3] and meta["command"] == "mix" and meta["ai_generated"] is True
    assert [i["photos"] for i in meta["identities"]] == [["obama.jpg"], ["biden.jpg"]]
    code, out, _ = run(capsys, "mix", faces_dir / "obama.jpg", faces_dir / "biden.jpg", "--ratio", 1.5, *FAST,
                       "--output", out_dir)
    assert code == 2 and sorted(os.listdir(out_dir)) == ["000-seed0.png"]


def test_mix_help_says_ratio_is_b_share(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["mix", "--help"])
    assert exit_info.value.code == 0
    assert "B's share" in " ".join(capsys.readouterr().out.split())


def test_adapter_folder_is_used_and_one_for_another_recognizer_refused(capsys, faces_dir, adapter_folder, tmp_path):
    common = ["generate", "--prompt", "x", "--identity", faces_dir / "obama.jpg", *FAST, "--output", tmp_path / "ok"]
    code, out, err = run(capsys, *common, "--adapter", adapter_folder)  # the last --adapter wins over FAST's
    assert code == 0, err
    assert read_png_metadata(tmp_path / "ok" / "000-seed0.png")["adapters"][0]["source"] == str(adapter_folder)

    other = tmp_path / "arcface-adapter"
    shutil.copytree(adapter_folder / "identity", other)
    config = json.loads((other / "facestudio_adapter.json").read_text())
    (other / "facestudio_adapter.json").write_text(json.dumps({**config, "recognizer": "arcface"}))
    out_dir = tmp_path / "refused"
    code, out, err = run(capsys, *common[:-1], out_dir, "--adapter", other)
    assert code == 2 and err.count("\n") == 1 and err.startswith("facestudio: error: ")
    assert "arcface" in err and "recogniser" in err and not out_dir.exists()


def test_interrupted_run_keeps_the_finished_images(capsys, faces_dir, tmp_path, monkeypatch):
    """Ctrl-C during image 2 of 3: image 1 stays whole, nothing half-written, exit status 130."""
    from facestudio.pipeline import FaceStudioPipeline

    real_call, calls = FaceStudioPipeline.__call__, []

    def stop_at_second_image(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(FaceStudioPipeline, "__call__", stop_at_second_image)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "generate", "--prompt", "x", "--identity", faces_dir / "obama.jpg", *FAST,
                         "--num-images", 3, "--output", out_dir)
    assert code == 130 and "interrupted" in err and "1 of 3 images were written" in err
    assert os.listdir(out_dir) == ["000-seed0.png"]  # no temporary or partial file left
    assert read_png_metadata(out_dir / "000-seed0.png")["seed"] == 0


# --- bad input: one line, exit status 2, no file ------------------------------------------------------


BAD = {
    "no face": (["--identity", "{bad}/noise.png"], ["noise.png", "no face found"]),
    "two faces": (["--identity", "{bad}/pair.png"], ["faces of similar size", "--face"]),
    "two regions": (["--identity", "{faces}/obama.jpg", "--region", "0,0,32,64", "--region", "32,0,64,64"],
                    ["2 --region", "1 identity"]),
    "no model": (["--identity", "{faces}/obama.jpg", "--base-model", "./no/such/folder"], ["no such folder"]),
    "width 65": (["--identity", "{faces}/obama.jpg", "--width", "65"], ["--width 65", "multiple of 8"]),
    "width 8192": (["--identity", "{faces}/obama.jpg", "--width", "8192"], ["--width 8192", "4096"]),
    "steps 0": (["--identity", "{faces}/obama.jpg", "--steps", "0"], ["--steps 0"]),
    "style without adapter": (["--identity", "{faces}/obama.jpg", "--style", "{faces}/obama2.jpg"],
                              ["--style", "style adapter"]),
    "segment without an image": (["--identity", "{faces}/obama.jpg", "--regions", "segment"],
                                 ["--regions 'segment' needs a scene or style image"]),
    "segment and a region": (["--identity", "{faces}/obama.jpg", "--region", "0,0,32,64", "--regions", "split"],
                             ["--regions 'split' places every person: drop the per-person --region"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(capsys, faces_dir, bad_photos, tmp_path, case):
    extra, expected = BAD[case]
    extra = [a.format(bad=bad_photos, faces=faces_dir) for a in extra]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "earlier.png").write_bytes(b"kept")
    code, out, err = run(capsys, "generate", "--prompt", "x", *FAST, "--output", out_dir, *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("facestudio: error: ") and "Traceback" not in err
    for words in expected:
        assert words in err
    assert os.listdir(out_dir) == ["earlier.png"] and out == ""


def test_regions_segment_places_people_by_the_style_image_silhouettes(capsys, faces_dir, bad_photos, tmp_path):
    pytest.importorskip("ai_edge_litert")
    people = ["--identity", faces_dir / "obama.jpg", "--identity", faces_dir / "biden.jpg"]
    style = ["--style", bad_photos / "pair.png", "--style-adapter", "tiny"]
    images = {}
    for choice in ("segment", "auto"):
        code, out, err = run(capsys, "generate", "--prompt", "two people", *people, *style, *FAST,
                             "--width", 128, "--height", 128, "--regions", choice, "--output", tmp_path / choice)
        assert code == 0, err
        assert read_png_metadata(out.strip())["regions"] == choice
        images[choice] = pixels(out.strip())
    assert np.abs(images["segment"].astype(int) - images["auto"]).max() > 0  # the silhouettes were used


def test_two_faces_with_face_chosen_works(capsys, bad_photos, tmp_path):
    code, out, err = run(capsys, "generate", "--prompt", "x", "--identity", bad_photos / "pair.png", "--face", 1,
                         *FAST, "--output", tmp_path)
    assert code == 0, err
    assert read_png_metadata(tmp_path / "000-seed0.png")["identities"][0]["face"] == 1


# --- the installed command ----------------------------------------------------------------------------


def test_installed_generate_command(faces_dir, tmp_path):
    exe = shutil.which("facestudio") or pytest.fail("the facestudio command is not installed")
    proc = subprocess.run([exe, "generate", "--prompt", "a photo", "--identity", str(faces_dir / "obama.jpg"),
                           *FAST, "--output", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "000-seed0.png")]
    assert "Traceback" not in proc.stderr and "untrained" in proc.stderr  # the tiny adapter is announced
    assert "torchvision" not in proc.stderr  # library chatter stays off
    assert read_png_metadata(tmp_path / "000-seed0.png")["ai_generated"] is True
