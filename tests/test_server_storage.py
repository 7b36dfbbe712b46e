"""The server's data folder and upload checks, on real files."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from facestudio.errors import FaceStudioError
from facestudio.guidance.identity import Identity
from facestudio.files import write_atomically
from facestudio.server.storage import DataFolder, valid_id
from facestudio.server.uploads import UploadError, UploadLimits, decode_upload, header_size, sniff_format


def identity(seed=0) -> Identity:
    rng = np.random.default_rng(seed)
    embedding = rng.normal(size=128).astype(np.float32)
    return Identity(embedding / np.linalg.norm(embedding), rng.normal(size=(64, 128)).astype(np.float32), "dlib", "x")


def test_stray_temporary_files_are_removed_on_start_and_real_files_kept(tmp_path):
    data = DataFolder(tmp_path)
    job = data.jobs / "0123456789abcdef"
    job.mkdir()
    (job / "000-seed1.png").write_bytes(b"png")
    (job / ".001-seed2.png.k3j4.tmp").write_bytes(b"half an image")
    DataFolder(tmp_path)
    assert [p.name for p in job.iterdir()] == ["000-seed1.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = write_atomically(tmp_path / "job.json", b"old")
    with pytest.raises(TypeError):
        write_atomically(path, "not bytes")  # fails inside the write, after the temporary file exists
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["job.json"]


def test_identity_round_trip_and_a_pickled_file_is_refused(tmp_path):
    data = DataFolder(tmp_path)
    original = identity()
    data.save_identity("00000000aaaaaaaa", original, {"id": "00000000aaaaaaaa", "name": "x", "recognizer": "dlib",
                                                      "created": 1.0, "photos": []})
    loaded = data.load_identity("00000000aaaaaaaa")
    assert np.array_equal(loaded.embedding, original.embedding) and np.array_equal(loaded.detail, original.detail)
    # An object array can only be stored pickled: loading it would run code, so it is refused instead.
    with open(data.identities / "00000000aaaaaaaa" / "identity.npz", "wb") as f:
        np.savez(f, embedding=np.array([print], dtype=object), detail=np.zeros((1, 1)))
    with pytest.raises(FaceStudioError, match="damaged"):
        data.load_identity("00000000aaaaaaaa")
    assert data.delete_identity("00000000aaaaaaaa") and data.load_identity("00000000aaaaaaaa") is None


@pytest.mark.parametrize("value", ["../identities", "0123456789ABCDEF", "abc", "0123456789abcdef/..", ""])
def test_ids_from_urls_are_server_made_ids_only(value, tmp_path):
    assert not valid_id(value)
    data = DataFolder(tmp_path)
    assert data.identity_info(value) is None and data.image_path(value) is None and not data.delete_identity(value)


def test_retention_keeps_the_newest_jobs_and_never_active_ones(tmp_path):
    data = DataFolder(tmp_path, max_jobs=2)
    names = [f"{i:016x}" for i in range(5)]
    for k, name in enumerate(names):
        data.save_job(name, {"id": name})
        os.utime(data.job_folder(name), (time.time() - 100 + k, time.time() - 100 + k))
    removed = data.trim_jobs(keep={names[0]})
    assert sorted(removed) == names[1:3]
    assert sorted(p.name for p in data.jobs.iterdir()) == [names[0], names[3], names[4]]


def encoded(fmt: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM"])
def test_every_accepted_format_is_known_by_its_content(fmt):
    data = encoded(fmt)
    assert sniff_format(data) == fmt and header_size(data, fmt) == (40, 30)
    decoded = decode_upload(data, "x", UploadLimits(), min_side=8)
    assert decoded.image.mode == "RGB" and decoded.image.size == (40, 30) and (decoded.width, decoded.height) == (40, 30)


def test_pixel_cap_is_judged_from_the_header():
    with pytest.raises(UploadError, match="200x100 pixels") as refused:
        decode_upload(encoded("PNG", (200, 100)), "wide.png", UploadLimits(max_pixels=10_000), min_side=8)
    assert refused.value.status == 422
    with pytest.raises(UploadError, match="not an image by its content") as refused:
        decode_upload(b"%PDF-1.7 ...", "doc.png", UploadLimits())
    assert refused.value.status == 415


def test_tokens_per_photo_is_stored_and_an_older_file_without_it_reads_as_zero(tmp_path):
    data = DataFolder(tmp_path)
    info = {"id": "00000000bbbbbbbb", "name": "x", "recognizer": "clip", "created": 1.0, "photos": []}
    original = Identity(np.zeros(0, np.float32), np.ones((10, 32), np.float32), "clip", "x", tokens_per_photo=5)
    data.save_identity("00000000bbbbbbbb", original, info)
    loaded = data.load_identity("00000000bbbbbbbb")
    assert loaded.tokens_per_photo == 5 and loaded.num_photos == 2
    # A file written before the field existed: embedding and detail only.
    with open(data.identities / "00000000bbbbbbbb" / "identity.npz", "wb") as f:
        np.savez(f, embedding=original.embedding, detail=original.detail)
    assert data.load_identity("00000000bbbbbbbb").tokens_per_photo == 0


def test_a_scene_image_gone_before_its_size_is_read_is_not_found(tmp_path):
    from facestudio.server.generation import NotFound, _scene_info

    data = DataFolder(tmp_path)
    with pytest.raises(NotFound, match="scene_image"):
        _scene_info(data, "00000000cccccccc")


def test_result_names_follow_the_cli_rule_and_ids_one_pattern(tmp_path):
    """Result names are `NNN-seedS.png` with 3 or more digits (as `facestudio generate` names them); the id and
    name patterns are defined once, in storage, and used by the app's path parameters and the request schema."""
    from facestudio.server import app, schemas, storage

    data = DataFolder(tmp_path)
    folder = data.job_folder("0123456789abcdef")
    folder.mkdir()
    for name in ("000-seed1.png", "1000-seed7.png", "00-seed1.png", "000-seed.png", "000-seed1.PNG"):
        (folder / name).write_bytes(b"png")
    found = [n for n in ("000-seed1.png", "1000-seed7.png", "00-seed1.png", "000-seed.png", "000-seed1.PNG",
                         "000-seed1.png\n", "../000-seed1.png") if data.job_image("0123456789abcdef", n)]
    assert found == ["000-seed1.png", "1000-seed7.png"]
    assert app.IdParam.__metadata__[0].metadata[0].pattern == storage.ID_PATTERN
    assert app.NameParam.__metadata__[0].metadata[0].pattern == storage.RESULT_NAME_PATTERN
    assert schemas.Id.__metadata__[0].metadata[0].pattern == storage.ID_PATTERN


def test_identity_info_read_once_and_listing_reads_no_arrays(tmp_path, monkeypatch):
    data = DataFolder(tmp_path)
    info = {"id": "00000000aaaaaaaa", "name": "x", "recognizer": "dlib", "created": 1.0, "photos": []}
    data.save_identity("00000000aaaaaaaa", identity(), info)
    with np.load(data.identities / "00000000aaaaaaaa" / "identity.npz", allow_pickle=False) as arrays:
        assert arrays["tokens_per_photo"] == 0 and arrays["embedding"].shape == (128,)
    opened = []
    monkeypatch.setattr(np, "load", lambda *a, **k: opened.append(a) or pytest.fail("arrays opened"))
    assert data.list_identities() == ([info], [])
    assert not opened
    monkeypatch.undo()
    monkeypatch.setattr(type(data), "identity_info", lambda *a: pytest.fail("identity.json read again"))
    assert data.load_identity("00000000aaaaaaaa", info).name == "x"


def test_saved_images_are_trimmed_and_job_records_skip_unreadable_files(tmp_path, caplog):
    data = DataFolder(tmp_path, max_jobs=1)
    for k, image_id in enumerate(("00000000aaaaaaaa", "00000000bbbbbbbb")):
        data.save_image(image_id, Image.new("RGB", (8, 8)), {"id": image_id, "width": 8, "height": 8, "faces": []})
        os.utime(data.images / f"{image_id}.png", (time.time() - 10 + k, time.time() - 10 + k))
    data.trim_images()
    assert data.image_path("00000000aaaaaaaa") is None and data.image_info("00000000bbbbbbbb") == {
        "id": "00000000bbbbbbbb", "width": 8, "height": 8, "faces": []}
    data.save_job("00000000cccccccc", {"id": "00000000cccccccc"})
    (data.job_folder("00000000dddddddd")).mkdir()
    (data.job_folder("00000000dddddddd") / "job.json").write_text("{not json")
    assert data.job_records() == [(data.job_folder("00000000cccccccc") / "job.json", {"id": "00000000cccccccc"})]
    assert "not a job record" in caplog.text
