"""The server under faults: a crash mid-job, damaged files, a read-only or full data folder, slow clients, a
taken port. Real parts only: `facestudio serve` as a process or uvicorn on loopback, real files and mounts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import fill_disk
from facestudio.cli import main
from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe
from test_server_api import SMALL, upload_identity, wait
from test_server_cli import free_port

MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def pipe():
    return new_pipe()


@contextlib.contextmanager
def serving(pipe, data_dir, **options):
    timeouts = {k: options.pop(k) for k in ("header_timeout", "body_timeout") if k in options}
    options = {"max_upload_bytes": MAX_BODY, "max_side": 256, "default_steps": 2, "base_model": "tiny", **options}
    app = create_app(pipe, data_dir, **options)
    with BackgroundServer(app, **timeouts) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        server.app = app
        yield server, client


# ---------------------------------------------------------------------------------------------- crash recovery

def start_serve(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "facestudio.cli", "serve", "--base-model", "tiny", "--port", str(port),
               "--data-dir", str(data_dir)]
    process = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return process, url
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


def test_sigkill_mid_job_keeps_the_images_made_and_the_job_says_it_was_interrupted(tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    process, url = start_serve(data_dir, log)
    try:
        job = httpx.post(url + "/v1/generations", timeout=30,
                         json={"prompt": "a portrait", "width": 64, "height": 64, "steps": 20, "count": 4,
                               "seed": 7}).json()
        deadline = time.monotonic() + 120
        while len(httpx.get(f"{url}/v1/generations/{job['id']}", timeout=30).json()["images"]) < 2:
            assert time.monotonic() < deadline, "two images were not made in time"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    folder = data_dir / "jobs" / job["id"]
    on_disk = sorted(p.name for p in folder.glob("*.png"))
    assert 2 <= len(on_disk) < 4 and on_disk[:2] == ["000-seed7.png", "001-seed8.png"]

    process, url = start_serve(data_dir, log)
    try:
        status = httpx.get(f"{url}/v1/generations/{job['id']}", timeout=30).json()
        assert status["state"] == "failed" and status["interrupted"] is True
        assert [i["name"] for i in status["images"]] == on_disk
        assert f"{len(on_disk)} of 4 images were made" in status["error"]
        for image in status["images"]:
            response = httpx.get(url + image["url"], timeout=30)
            assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (64, 64)
        record = json.loads((folder / "job.json").read_text())  # rewritten whole, no longer "running"
        assert record["state"] == "failed" and record["images"] == on_disk
    finally:
        process.terminate()
        process.wait(30)
    # The server's own lines only: no library warning, no uvicorn wording, no traceback.
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert all(line.startswith(("facestudio:", "note:")) for line in lines), lines


# ---------------------------------------------------------------------------------------------- damaged files

def test_damaged_identity_and_image_files_are_skipped_reported_and_refused_alone(pipe, tmp_path, faces_dir):
    with serving(pipe, tmp_path / "data") as (server, client):
        good = upload_identity(client, faces_dir / "obama.jpg").json()["id"]
        scene = client.post("/v1/images", files={"image": ("s.jpg", (faces_dir / "obama.jpg").read_bytes())})
        root = server.app.state.data.identities
        damage = {  # a truncated zip, a pickled object array, broken JSON, JSON of the wrong shape
            "00000000000000a1": lambda f: (f / "identity.npz").write_bytes((f / "identity.npz").read_bytes()[:100]),
            "00000000000000a2": lambda f: np.savez(f / "identity.npz", embedding=np.array([print], dtype=object),
                                                   detail=np.zeros((1, 1))),
            "00000000000000a3": lambda f: (f / "identity.json").write_text('{"name": "x", '),
            "00000000000000a4": lambda f: (f / "identity.json").write_text("[1, 2]"),
        }
        for identity_id, spoil in damage.items():
            shutil.copytree(root / good, root / identity_id)
            info = json.loads((root / identity_id / "identity.json").read_text())
            (root / identity_id / "identity.json").write_text(json.dumps({**info, "id": identity_id}))
            spoil(root / identity_id)
        (server.app.state.data.images / f"{scene.json()['id']}.json").write_bytes(b"\xff\xfe not json")

        listed = client.get("/v1/identities")
        assert listed.status_code == 200
        assert [i["id"] for i in listed.json()["identities"]] == [good]
        reasons = {d["id"]: d["error"] for d in listed.json()["damaged"]}
        assert sorted(reasons) == sorted(damage)
        assert "identity.npz" in reasons["00000000000000a1"] and "BadZipFile" in reasons["00000000000000a1"]
        assert "identity.json" in reasons["00000000000000a3"] and "lacks" in reasons["00000000000000a4"]
        for identity_id in damage:
            one = client.get(f"/v1/identities/{identity_id}")
            assert one.status_code == 409 and "damaged" in one.json()["error"] and identity_id in one.json()["error"]
            job = client.post("/v1/generations", json={"prompt": "x", **SMALL, "identities": [{"id": identity_id}]})
            assert job.status_code == 409 and "delete it" in job.json()["error"]
        used = client.post("/v1/generations", json={"prompt": "x", "steps": 2, "scene_image": scene.json()["id"],  # its size: from its JSON
                                                    "identities": [{"id": good}]})
        assert used.status_code == 409 and "uploaded image" in used.json()["error"]
        # The one connection served all of it (no reset), and a damaged entry can still be deleted.
        assert client.delete("/v1/identities/00000000000000a1").status_code == 204
        assert [d["id"] for d in client.get("/v1/identities").json()["damaged"]] == sorted(damage)[1:]


def test_a_scene_without_a_face_or_a_face_number_out_of_range_is_refused_at_submission(pipe, tmp_path, faces_dir):
    with serving(pipe, tmp_path / "data") as (server, client):
        person = upload_identity(client, faces_dir / "obama.jpg").json()["id"]
        blank = io.BytesIO()
        Image.new("RGB", (96, 64), (120, 160, 200)).save(blank, format="PNG")
        empty = client.post("/v1/images", files={"image": ("sky.png", blank.getvalue())}).json()["id"]
        scene = client.post("/v1/images", files={"image": ("o.jpg", (faces_dir / "obama.jpg").read_bytes())}).json()
        base = {"prompt": "x", **SMALL, "identities": [{"id": person}]}
        refused = client.post("/v1/generations", json={**base, "scene_image": empty})
        assert refused.status_code == 422 and "no face" in refused.json()["error"], refused.text
        refused = client.post("/v1/generations", json={**base, "scene_image": scene["id"], "scene_faces": [3]})
        assert refused.status_code == 400 and "scene faces [3]" in refused.json()["error"]
        assert client.get("/v1/generations").json() == []  # nothing was queued


# ---------------------------------------------------------------------------------------------- the data folder

def test_data_folder_is_private_and_older_wider_permissions_are_narrowed(pipe, tmp_path, faces_dir):
    data_dir = tmp_path / "data"
    (data_dir / "jobs" / "00000000000000b1").mkdir(parents=True, mode=0o755)
    (data_dir / "jobs" / "00000000000000b1" / "000-seed1.png").write_bytes(b"png")
    os.chmod(data_dir, 0o755)
    with serving(pipe, data_dir) as (server, client):
        upload_identity(client, faces_dir / "obama.jpg")
        job = client.post("/v1/generations", json={"prompt": "x", **SMALL}).json()
        assert wait(client, job["id"])["state"] == "done"
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [data_dir, *data_dir.rglob("*")]}
    assert len(modes) > 8
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o700 if p.is_dir() else 0o600)}
    assert not wrong


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_serve_refuses_a_data_folder_it_cannot_write_with_one_line_and_exit_2(kind, tmpfs, capsys):
    mnt = tmpfs("mnt", "size=1m,ro" if kind == "read-only" else "size=256k")
    if kind == "full":
        fill_disk(mnt)
    status = main(["serve", "--base-model", "tiny", "--port", str(free_port()), "--data-dir", str(mnt)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and str(mnt) in error, error
    assert ("read-only" if kind == "read-only" else "full") in error


def test_a_disk_that_fills_during_a_job_fails_it_cleanly_and_refuses_uploads_with_507(pipe, tmpfs, faces_dir):
    mnt = tmpfs("mnt", "size=4m")
    with serving(pipe, mnt) as (server, client):
        fill_disk(mnt, leave=40 * 1024)  # room for job records, not for a 256x256 image
        job = client.post("/v1/generations", json={"prompt": "x", "width": 256, "height": 256, "steps": 2})
        assert job.status_code == 202, job.text
        status = wait(client, job.json()["id"])
        assert status["state"] == "failed" and status["images"] == []
        assert "cannot write to the data folder" in status["error"] and "the disk is full" in status["error"]
        assert "internal error" not in status["error"]
        fill_disk(mnt, name="filler-2")
        upload = upload_identity(client, faces_dir / "obama.jpg")
        assert upload.status_code == 507 and "the disk is full" in upload.json()["error"]
        assert not list(mnt.rglob(".*.tmp")) and not list(mnt.rglob("*.png"))
        assert not list(server.app.state.data.identities.iterdir())  # no half-written identity left


# ---------------------------------------------------------------------------------------------- slow clients

def raw_connection(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_slow_clients_are_answered_408_or_413_and_closed_within_the_timeouts(pipe, tmp_path):
    with serving(pipe, tmp_path / "data", header_timeout=1.0, body_timeout=1.0) as (server, client):
        # Headers one byte at a time.
        sock, t0 = raw_connection(server), time.monotonic()
        for byte in b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n":
            if select.select([sock], [], [], 0.25)[0] or time.monotonic() - t0 > 3:  # answered (or hung): stop
                break
            sock.sendall(bytes([byte]))
        answer = read_until_closed(sock)
        assert time.monotonic() - t0 < 3 and answer.startswith(b"HTTP/1.1 408"), answer
        assert b"headers did not arrive within 1 s" in answer

        # A declared 30 MB body that never comes: 413 at once, then the connection is closed.
        sock, t0 = raw_connection(server), time.monotonic()
        sock.sendall(b"POST /v1/identities HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 31457280\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - t0 < 3, answer

        # A body under the cap sent a byte at a time: 408, closed.
        sock, t0 = raw_connection(server), time.monotonic()
        sock.sendall(b"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                     b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
        for byte in b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n':
            if select.select([sock], [], [], 0.25)[0]:
                break
            sock.sendall(bytes([byte]))
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408") and b"body did not arrive" in answer, answer
        assert time.monotonic() - t0 < 4

        # A request refused before its body was read, the body sent after the answer, then silence: the
        # connection gets the next request's deadline (it had none once the discarded body ended).
        sock = raw_connection(server)
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n")
        assert select.select([sock], [], [], 5)[0] and sock.recv(65536).startswith(b"HTTP/1.1 4")
        sock.sendall(b"0123456789")
        t0 = time.monotonic()
        read_until_closed(sock)
        assert time.monotonic() - t0 < 3

        # A connection opened and never used is closed without a word; ordinary requests are unaffected.
        sock = raw_connection(server)
        assert read_until_closed(sock) == b""
        assert client.get("/v1/models").status_code == 200


# ---------------------------------------------------------------------------------------------- uploads, port

def test_a_large_photo_is_analysed_shrunk_and_described_at_its_own_size(pipe, tmp_path, faces_dir):
    photo = Image.open(faces_dir / "obama.jpg").convert("RGB")
    big = io.BytesIO()
    photo.resize((photo.width * 3, photo.height * 3)).save(big, format="JPEG", quality=60)
    with serving(pipe, tmp_path / "data", max_upload_bytes=16 * MAX_BODY) as (server, client):
        small = upload_identity(client, faces_dir / "obama.jpg").json()["photos"][0]
        large = client.post("/v1/identities", files=[("photos", ("big.jpg", big.getvalue()))]).json()["photos"][0]
    assert (large["width"], large["height"]) == (photo.width * 3, photo.height * 3)
    box, expected = np.array(large["faces"][0]["box"]), 3 * np.array(small["faces"][0]["box"])
    assert np.abs(box - expected).max() < 0.05 * (expected[2] - expected[0]), (box, expected)


def test_the_upload_pool_runs_a_bounded_number_and_refuses_beyond_with_429():
    import anyio
    import threading

    from facestudio.server.uploads import UploadError, UploadPool

    pool, release, outcomes = UploadPool(workers=1, waiting=1, retry_after=3), threading.Event(), []

    async def one():
        try:
            outcomes.append(await pool.run(release.wait, 10))
        except UploadError as e:
            outcomes.append((e.status, e.retry_after))

    async def scenario():
        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(one)
            await anyio.sleep(0.2)
            assert outcomes == [(429, 3)]  # one runs, one waits without a thread, the third is refused
            release.set()

    anyio.run(scenario)
    assert outcomes == [(429, 3), True, True]


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["serve", "--base-model", "tiny", "--port", str(port), "--data-dir", str(tmp_path / "d")])
    error = capsys.readouterr().err
    assert status == 2 and error == f"facestudio: error: --port {port}: port {port} is in use on 127.0.0.1 " \
                                    "(another server?); stop it or choose another --port\n"
