"""`prepare`: the face cache made from real photos, the report of bad ones, resuming, the command."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from facestudio.cli import main
from facestudio.errors import FaceStudioError
from facestudio.training.prepare import (MANIFEST_NAME, PrepareSettings, prepare_dataset, read_manifest,
                                         sample_id)

SETTINGS = PrepareSettings(resolution=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_photo_folder(root, faces_dir, with_bad=True):
    """Real photos at several depths (one captioned) and, with `with_bad`, one file for each kind of bad data.

    Returns `{bad file name: words its reason must contain}`.
    """
    (root / "people" / "obama").mkdir(parents=True)
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        shutil.copy(faces_dir / name, root / "people" / "obama" / name)
    shutil.copy(faces_dir / "biden.jpg", root / "biden.jpg")
    (root / "biden.txt").write_text("a man in a dark suit, official portrait\n")
    shutil.copy(faces_dir / "32bit.png", root / "people" / "32bit.png")
    if not with_bad:
        return {}
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes((faces_dir / "obama.jpg").read_bytes()[:3000])
    Image.new("RGB", (400, 400), (120, 140, 160)).save(root / "blank.png")
    photo = Image.open(faces_dir / "obama.jpg").convert("RGB")
    photo.resize((photo.width // 12, photo.height // 12), Image.LANCZOS).save(root / "tiny-face.jpg")
    tile = photo.resize((240, 300), Image.LANCZOS)
    crowd = Image.new("RGB", (960, 600))
    for i in range(8):
        crowd.paste(tile, ((i % 4) * 240, (i // 4) * 300))
    crowd.save(root / "crowd.webp")
    return {"empty.jpg": ["unreadable", "empty"], "truncated.jpg": ["unreadable", "truncated"],
            "blank.png": ["no face"], "tiny-face.jpg": ["too small"], "crowd.webp": ["8 faces", "crowd"]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, faces_dir, analyzer):
    root = tmp_path_factory.mktemp("photos")
    bad = make_photo_folder(root, faces_dir)
    out = tmp_path_factory.mktemp("cache") / "cache"
    report = prepare_dataset(root, out, SETTINGS, analyzer=analyzer, progress=False)
    return root, out, report, bad


def test_every_bad_file_is_reported_with_its_reason(prepared):
    root, out, report, bad = prepared
    reasons = {r["source"]: r["reason"] for r in report.rejected}
    assert set(reasons) == set(bad)
    for name, words in bad.items():
        assert all(w in reasons[name] for w in words), (name, reasons[name])
    assert sorted(report.accepted) == ["biden.jpg", "people/32bit.png", "people/obama/obama.jpg",
                                       "people/obama/obama2.jpg", "people/obama/obama3.jpg"]
    text = (out / "report.txt").read_text()
    assert text.startswith("10 photos: 5 usable, 5 rejected")
    assert all(f"{name}: " in text for name in bad)
    assert json.loads((out / "report.json").read_text())["rejected"] == report.rejected


def test_samples_hold_the_photo_face_masks_and_embedding(prepared, faces_dir, analyzer):
    root, out, report, bad = prepared
    manifest = read_manifest(out)
    assert manifest["settings"]["resolution"] == 64 and len(manifest["samples"]) == 5
    entry = next(s for s in manifest["samples"] if s["source"] == "biden.jpg")
    assert entry["caption"] == "a man in a dark suit, official portrait"
    assert all(s["caption"] == "" for s in manifest["samples"] if s["source"] != "biden.jpg")
    with np.load(out / entry["file"]) as data:
        sample = {k: data[k] for k in data.files}
    assert sample["image"].shape == (64, 64, 3) and sample["image"].dtype == np.uint8
    assert sample["detail"].shape == (64, 128) and sample["aligned"].shape == (150, 150, 3)
    # the embedding is the recogniser's view of the face in the full photo
    expected = analyzer.embed(np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))).vector
    assert float(np.dot(sample["embedding"], expected)) > 0.999
    # the hidden area covers the eyes, nose and mouth; the person region covers the face and more
    points = np.round(sample["landmarks"]).astype(int)
    assert sample["face_mask"][points[:, 1], points[:, 0]].all()
    assert 0.05 < sample["face_mask"].mean() < 0.6
    assert sample["person_mask"].sum() > 1.5 * sample["face_mask"].sum()
    assert sample["person_mask"][points[:, 1], points[:, 0]].min() > 0.9


def test_the_cached_identity_is_what_inference_encodes(prepared, faces_dir, analyzer):
    """Training learns from the cache's embedding and detail tokens: they must be inference's, in its layout."""
    from facestudio.guidance.identity import encode_photos

    root, out, report, bad = prepared
    entry = next(s for s in read_manifest(out)["samples"] if s["source"] == "biden.jpg")
    with np.load(out / entry["file"]) as data:
        embedding, detail = data["embedding"], data["detail"]
    identity = encode_photos(analyzer, [np.asarray(Image.open(faces_dir / "biden.jpg").convert("RGB"))])
    np.testing.assert_array_equal(embedding, identity.embedding)
    np.testing.assert_array_equal(detail, identity.detail.astype(np.float16))


def test_a_second_run_resumes(prepared, analyzer, faces_dir):
    root, out, report, bad = prepared
    again = prepare_dataset(root, out, SETTINGS, analyzer=analyzer, progress=False)
    assert again.skipped == 10 and again.accepted == report.accepted and again.rejected == report.rejected
    # a new photo and a deleted sample file are done; the rest is still skipped
    shutil.copy(faces_dir / "obama.jpg", root / "new.jpg")
    (out / "samples" / f"{sample_id('biden.jpg')}.npz").unlink()
    third = prepare_dataset(root, out, SETTINGS, analyzer=analyzer, progress=False)
    assert third.skipped == 9 and "new.jpg" in third.accepted and "biden.jpg" in third.accepted
    (root / "new.jpg").unlink()
    with pytest.raises(FaceStudioError, match="resume with the same settings"):
        prepare_dataset(root, out, PrepareSettings(resolution=128), analyzer=analyzer, progress=False)


def test_other_cache_versions_and_folders_are_refused(tmp_path, faces_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MANIFEST_NAME).write_text(json.dumps({"format": "facestudio-face-cache", "version": 999}))
    with pytest.raises(FaceStudioError, match="version 999"):
        read_manifest(cache)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FaceStudioError, match="not a face cache"):
        prepare_dataset(faces_dir, tmp_path / "other", SETTINGS, progress=False)


def test_prepare_command(tmp_path, faces_dir, capsys):
    photos = tmp_path / "photos"
    bad = make_photo_folder(photos, faces_dir)
    assert main(["prepare", str(photos), str(tmp_path / "out"), "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("10 photos: 5 usable, 5 rejected")
    assert all(f"rejected {name}: " in out for name in bad)
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    shutil.copy(photos / "blank.png", only_bad)
    assert main(["prepare", str(only_bad), str(tmp_path / "out2"), "--resolution", "64"]) == 2
    err = capsys.readouterr().err
    assert "no photo has a usable face" in err and len(err.strip().splitlines()) == 1
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out3")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["prepare", str(photos), str(tmp_path / "out4"), "--resolution", "100"]) == 2
    assert "multiple of 64" in capsys.readouterr().err
