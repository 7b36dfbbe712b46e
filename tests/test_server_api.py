"""The HTTP API with the real server (uvicorn on loopback), a tiny pipeline and the real face detector."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_labelled
from facestudio.imaging import read_png_metadata
from facestudio.pipeline import IdentityInput
from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe

SMALL = {"width": 64, "height": 64, "steps": 2}
MAX_BODY = 1024 * 1024  # the test server's upload cap: small, so an oversize body is cheap to send


@pytest.fixture(scope="module")
def pipe():
    return new_pipe(style=True)


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    app = create_app(pipe, tmp_path_factory.mktemp("data"), queue_size=2, max_upload_bytes=MAX_BODY,
                     max_side=256, default_steps=2, base_model="tiny")
    with BackgroundServer(app) as running:
        running.app = app
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def obama_id(client, faces_dir):
    return upload_identity(client, faces_dir / "obama.jpg").json()["id"]


def upload_identity(client, *paths, **form):
    files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return client.post("/v1/identities", files=files, data=form)


def wait(client, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/generations/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout} s")


def generate(client, **request) -> dict:
    response = client.post("/v1/generations", json={"prompt": "a portrait photo", **SMALL, **request})
    assert response.status_code == 202, response.text
    return wait(client, response.json()["id"])


def png_pixels(client, url) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


# ---------------------------------------------------------------------------------------------- identities

def test_identity_upload_reports_faces_and_embedding_then_list_and_delete(client, analyzer, faces_dir):
    response = upload_identity(client, faces_dir / "obama.jpg", faces_dir / "obama2.jpg", name="Barack")
    assert response.status_code == 201, response.text
    identity = response.json()
    assert identity["name"] == "Barack" and identity["recognizer"] == "dlib"
    assert [p["name"] for p in identity["photos"]] == ["obama.jpg", "obama2.jpg"]
    for photo in identity["photos"]:
        assert photo["used"] == 0 and len(photo["faces"]) >= 1
        x0, y0, x1, y1 = photo["faces"][0]["box"]
        assert 0 <= x0 < x1 <= photo["width"] and 0 <= y0 < y1 <= photo["height"]
    embedding = np.asarray(identity["embedding"])
    assert embedding.shape == (128,) and abs(np.linalg.norm(embedding) - 1) < 1e-4
    # The stored embedding is Obama's: close to his face in a third photo, far from Biden's.
    from facestudio import load_image

    obama3 = analyzer.embed(load_image(faces_dir / "obama3.jpg")).vector
    biden = analyzer.embed(load_image(faces_dir / "biden.jpg")).vector
    assert embedding @ obama3 > 0.91 > embedding @ biden

    listed = client.get("/v1/identities").json()["identities"]
    assert identity["id"] in [i["id"] for i in listed]
    assert client.get(f"/v1/identities/{identity['id']}").json()["embedding"] == identity["embedding"]
    assert client.delete(f"/v1/identities/{identity['id']}").status_code == 204
    assert client.get(f"/v1/identities/{identity['id']}").status_code == 404
    gone = client.delete(f"/v1/identities/{identity['id']}")
    assert gone.status_code == 404 and "no identity" in gone.json()["error"]


def test_face_number_out_of_range_is_refused(client, faces_dir):
    response = upload_identity(client, faces_dir / "obama.jpg", face="3")
    assert response.status_code == 422
    assert "face 3 asked for" in response.json()["error"]


def test_two_similar_faces_need_the_face_field(client, faces_dir):
    """The shared dominant-face rule (`select_face`), its advice worded for the API's `face` field."""
    photo = Image.open(faces_dir / "obama.jpg").convert("RGB").resize((364, 455))
    pair = Image.new("RGB", (728, 455))
    pair.paste(photo, (0, 0))
    pair.paste(photo, (364, 0))
    buffer = io.BytesIO()
    pair.save(buffer, "JPEG", quality=92)
    files = [("photos", ("pair.jpg", buffer.getvalue(), "image/jpeg"))]
    response = client.post("/v1/identities", files=files)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "2 faces of similar size" in error and "'face' field" in error and "--face" not in error
    chosen = client.post("/v1/identities", files=files, data={"face": "1"})
    assert chosen.status_code == 201 and chosen.json()["photos"][0]["used"] == 1
    client.delete(f"/v1/identities/{chosen.json()['id']}")


def test_select_face_advice_is_the_callers_and_the_cli_text_unchanged():
    from facestudio.errors import AmbiguousFaceError
    from facestudio.faces import Face
    from facestudio.faces.analysis import select_face, select_face_index

    def face(x):
        return Face(box=(x, 0, x + 100, 100), landmarks=((x + 30, 40), (x + 70, 40), (x + 50, 60), (x + 35, 80),
                                                          (x + 65, 80)), score=0.9)

    a, b = face(0), face(200)
    with pytest.raises(AmbiguousFaceError) as cli:
        select_face([a, b], source="pair.jpg")
    assert str(cli.value).endswith("; choose one with --face N (0 is the largest)")
    with pytest.raises(AmbiguousFaceError) as server:
        select_face_index([a, b], source="pair.jpg", advice="the 'face' field")
    assert str(server.value) == str(cli.value).replace("--face N", "the 'face' field")
    assert select_face_index([a, b], 1) == 1 and select_face_index([a]) == 0 and select_face([a, b], 1) is b


# ---------------------------------------------------------------------------------------------- bad uploads

def png_header_claiming(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header claims `width` x `height` pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def face_free_photo(faces_dir) -> bytes:
    """The lower part of a real photo: suit and background, no face."""
    image = Image.open(faces_dir / "obama.jpg")
    buffer = io.BytesIO()
    image.crop((0, 640, image.width, image.height)).save(buffer, format="JPEG")
    return buffer.getvalue()


BAD_UPLOADS = {
    # case: (file name, content maker, status, words the message must contain)
    "zero-byte": ("empty.jpg", lambda d: b"", 400, "empty"),
    "truncated": ("cut.jpg", lambda d: (d / "obama.jpg").read_bytes()[:3000], 422, "truncated"),
    "text named .png": ("notes.png", lambda d: b"just some text, not an image\n" * 20, 415, "not an image"),
    "30000x30000 header": ("bomb.png", lambda d: png_header_claiming(30000, 30000), 422, "30000x30000"),
    "oversize body": ("huge.jpg", lambda d: b"\xff\xd8\xff" + b"\0" * (MAX_BODY + 10), 413, "above the limit"),
}


# A style or scene image needs no face: "no face" is a bad upload for identities only.
UPLOAD_CASES = [("/v1/identities", "photos", case) for case in [*BAD_UPLOADS, "no face"]] + \
               [("/v1/images", "image", case) for case in BAD_UPLOADS]


@pytest.mark.parametrize("endpoint,field,case", UPLOAD_CASES)
def test_bad_upload_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(client, faces_dir, case,
                                                                                endpoint, field):
    if case == "no face":
        name, content, status, words = "back.jpg", face_free_photo(faces_dir), 422, "no face found"
    else:
        name, make, status, words = BAD_UPLOADS[case]
        content = make(faces_dir)
    response = client.post(endpoint, files=[(field, (name, content, "image/png"))])
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert words in message
    if case != "oversize body":
        assert name in message  # the message names the file
    assert "Traceback" not in response.text
    assert client.get("/v1/models").status_code == 200


def test_style_image_upload_is_reencoded_and_reports_faces(client, faces_dir, server):
    response = client.post("/v1/images", files=[("image", ("obama.jpg", (faces_dir / "obama.jpg").read_bytes(),
                                                           "image/jpeg"))])
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["width"], info["height"]) == (910, 1137) and len(info["faces"]) == 1
    stored = client.get(f"/v1/images/{info['id']}")
    assert stored.headers["content-type"] == "image/png" and stored.content[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- generations

def test_generation_progress_stream_and_png_equal_to_a_direct_pipeline_call(client, pipe, server, obama_id):
    request = {"prompt": "an astronaut", "negative_prompt": "blurry", "seed": 7, "count": 2,
               "identities": [{"id": obama_id, "region": [0, 0, 40, 64], "strength": 1.5}],
               "text_guidance_scale": 6.0, "reference_guidance_scale": 3.0, **SMALL}
    response = client.post("/v1/generations", json=request)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["total_steps"] == 4 and job["state"] in ("queued", "running")

    events = []
    with client.stream("GET", f"/v1/generations/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    steps = [e["step"] for _, e in events]
    assert steps == sorted(steps) and events[-1][0] == "end" and events[-1][1]["state"] == "done"
    assert events[-1][1]["step"] == 4
    done = client.get(f"/v1/generations/{job['id']}").json()
    assert [i["seed"] for i in done["images"]] == [7, 8]

    # The server's image is exactly what the pipeline makes with the same settings.
    identity = server.app.state.data.load_identity(obama_id)
    direct = pipe("an astronaut", negative_prompt=["blurry"],
                  identities=[IdentityInput(identity=identity, region=(0, 0, 40, 64), strength=1.5)],
                  text_guidance_scale=6.0, reference_guidance_scale=3.0, num_inference_steps=2, width=64,
                  height=64, generator=torch.Generator().manual_seed(8)).images[0]
    assert np.array_equal(png_pixels(client, done["images"][1]["url"]), np.asarray(direct))

    # Same metadata and AI-generated label as the command line.
    path = server.app.state.data.job_image(job["id"], done["images"][0]["name"])
    metadata = read_png_metadata(path)
    assert metadata["ai_generated"] is True and metadata["seed"] == 7 and metadata["prompt"] == "an astronaut"
    assert metadata["digital_source_type"].endswith("trainedAlgorithmicMedia")
    assert metadata["identities"][0]["id"] == obama_id and metadata["identities"][0]["strength"] == 1.5
    assert Image.open(path).info["AI-generated"] == "true"
    assert metadata["adapters"] == [{"kind": "identity", "type": "facestudio"}, {"kind": "style", "type": "ip-adapter"}]
    assert_labelled(path)
    assert "Seed: 7, Size: 64x64" in Image.open(path).info["parameters"]


def test_per_job_settings_do_not_leak_into_the_next_job(client, faces_dir, obama_id, server):
    style = client.post("/v1/images", files=[("image", ("b.jpg", (faces_dir / "biden.jpg").read_bytes(),
                                                        "image/jpeg"))]).json()["id"]
    biden = upload_identity(client, faces_dir / "biden.jpg").json()["id"]
    plain = {"seed": 3, "identities": [{"id": obama_id}]}
    first = generate(client, **plain)
    other = generate(client, prompt="something else", seed=3, style_image=style, style_strength=2.0,
                     identities=[{"id": obama_id}, {"id": biden}], mix=[0.5, 0.5], text_guidance_scale=1.0)
    again = generate(client, **plain)
    assert first["state"] == other["state"] == again["state"] == "done", (first, other, again)
    a, b, c = (png_pixels(client, job["images"][0]["url"]) for job in (first, other, again))
    assert np.array_equal(a, c) and not np.array_equal(a, b)
    # Each job's record on disk ends in its final state: the submitting request's "queued" record was written
    # first and never overwrites the worker's (it is written after the state changes, so allow it a moment).
    data = server.app.state.data
    for job in (first, other, again):
        deadline = time.monotonic() + 5
        while json.loads((data.job_folder(job["id"]) / "job.json").read_text())["state"] != "done":
            assert time.monotonic() < deadline, f"job {job['id']}: its record on disk is not final"
            time.sleep(0.02)


@pytest.mark.parametrize("change,status,words", [
    ({"identities": [{"id": "0123456789abcdef"}]}, 404, "no identity with id 0123456789abcdef"),
    ({"style_image": "0123456789abcdef"}, 404, "style_image"),
    ({"region": [0, 0, 80, 64]}, 400, "not a box inside the 64x64 image"),
    ({"mix": [1.0]}, 400, "mix needs one weight per identity"),
    ({"width": 60}, 422, "width"),
    ({"width": 512}, 400, "at most 256 pixels"),
    ({"steps": 0}, 422, "steps"),
    ({"count": 9}, 400, "at most 8 images"),
    ({"colour": "red"}, 422, "colour"),
    ({"prompt": ""}, 422, "prompt"),
    ({"regions": "segment"}, 400, "regions 'segment' needs a scene or style image"),
    ({"regions": "faces"}, 422, "regions"),
    ({"region": [0, 0, 8, 8], "regions": "split"}, 400, "regions 'split' places every person: drop the per-person"),
])
def test_bad_generation_request_is_refused_with_a_message(client, obama_id, change, status, words):
    request = {"prompt": "x", **SMALL, "identities": [{"id": obama_id}], **change}
    if "region" in change:
        request["identities"] = [{"id": obama_id, "region": request.pop("region")}]
    response = client.post("/v1/generations", json=request)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_malformed_json_and_unknown_job(client):
    response = client.post("/v1/generations", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["error"]
    assert client.get("/v1/generations/0123456789abcdef").status_code == 404
    assert client.get("/v1/generations/../../etc/passwd").status_code == 404
    assert client.get("/v1/generations/0123456789abcdef/images/000-seed0.png").status_code == 404


def test_models_reports_what_is_loaded(client):
    info = client.get("/v1/models").json()
    assert info["base_model"] == "tiny" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert [a["kind"] for a in info["adapters"]] == ["identity", "style"]
    assert info["workers"] == 1 and info["queue_size"] == 2
    assert info["default_side"] == 512  # SD 1.5's; the page leaves width/height to it when not set


def test_openapi_schema_describes_the_v1_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/identities", "/v1/identities/{identity_id}", "/v1/images", "/v1/generations",
                 "/v1/generations/{job_id}", "/v1/generations/{job_id}/events",
                 "/v1/generations/{job_id}/images/{name}", "/v1/generations/{job_id}/cancel", "/v1/models"):
        assert path in paths


# ---------------------------------------------------------------------------------------------- the queue

LONG = {"prompt": "long", "width": 128, "height": 128, "steps": 200, "count": 8}


def wait_state(client, job_id, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while (state := client.get(f"/v1/generations/{job_id}").json()["state"]) not in states:
        assert time.monotonic() < deadline, f"job {job_id} stayed {state}"
        time.sleep(0.02)
    return state


def test_full_queue_answers_429_and_cancelled_jobs_free_their_slots(client, server):
    running = client.post("/v1/generations", json=LONG).json()["id"]
    wait_state(client, running, {"running"})
    waiting = [client.post("/v1/generations", json=LONG) for _ in range(2)]
    assert [r.status_code for r in waiting] == [202, 202]
    assert [r.json()["queue_position"] for r in waiting] == [0, 1]
    full = client.post("/v1/generations", json=LONG)
    assert full.status_code == 429 and "queue is full" in full.json()["error"]
    assert int(full.headers["Retry-After"]) >= 1
    on_disk = {p.name for p in server.app.state.data.jobs.iterdir()}
    assert on_disk == set(server.app.state.jobs)  # the refused job left no record behind

    cancelled = client.post(f"/v1/generations/{waiting[0].json()['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"  # a waiting job leaves the queue at once
    refill = client.post("/v1/generations", json=LONG)
    assert refill.status_code == 202

    client.post(f"/v1/generations/{running}/cancel")
    assert wait_state(client, running, {"cancelled"}, timeout=10) == "cancelled"
    for job in (waiting[1].json()["id"], refill.json()["id"]):
        client.post(f"/v1/generations/{job}/cancel")
        wait_state(client, job, {"cancelled"}, timeout=10)
    assert server.app.state.queue.max_waiting_seen <= 2
    # A cancelled job's final record is written just after its state reads "cancelled": wait for the writes
    # in flight, then nothing temporary may be left.
    deadline = time.monotonic() + 5
    while list(server.app.state.data.root.rglob("*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(server.app.state.data.root.rglob("*.tmp"))
    assert generate(client, seed=1)["state"] == "done"  # the worker is free again


def test_a_job_past_its_time_limit_stops_and_the_next_runs(pipe, tmp_path):
    app = create_app(pipe, tmp_path, job_timeout=2.0, max_side=256)
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=30) as c:
        slow = c.post("/v1/generations", json=LONG).json()["id"]
        status = wait(c, slow)
        assert status["state"] == "timed_out" and "time limit of 2 s" in status["error"]
        assert status["step"] < status["total_steps"]
        assert generate(c, seed=2)["state"] == "done"


# ---------------------------------------------------------------------------------------------- access

def test_token_is_required_when_set_and_the_page_loads_without_it(pipe, tmp_path):
    app = create_app(pipe, tmp_path, token="s3cret-token-for-tests")
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=30) as c:
        refused = c.get("/v1/models")
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret-token-for-tests"}).status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data; it asks for the token


def test_foreign_host_and_cross_origin_posts_are_refused(client, faces_dir):
    assert client.get("/v1/models", headers={"Host": "attacker.example"}).status_code == 403
    response = client.post("/v1/generations", json={"prompt": "x"}, headers={"Origin": "http://attacker.example"})
    assert response.status_code == 403 and "attacker.example" in response.json()["error"]


def test_a_restarted_server_still_lists_finished_jobs_and_serves_their_images(pipe, tmp_path):
    with BackgroundServer(create_app(pipe, tmp_path, max_side=256)) as first, \
            httpx.Client(base_url=first.url, timeout=30) as c:
        done = generate(c, seed=4)
        image = png_pixels(c, done["images"][0]["url"])
    with BackgroundServer(create_app(pipe, tmp_path, max_side=256)) as second, \
            httpx.Client(base_url=second.url, timeout=30) as c:
        listed = c.get("/v1/generations").json()
        assert [j["id"] for j in listed] == [done["id"]] and listed[0]["state"] == "done"
        assert listed[0]["request"] == done["request"] and listed[0]["seed"] == 4
        assert np.array_equal(png_pixels(c, listed[0]["images"][0]["url"]), image)


def test_regions_segment_in_a_request_places_the_person_by_the_scene_silhouette(client, faces_dir, obama_id):
    pytest.importorskip("ai_edge_litert")
    assert client.get("/v1/models").json()["regions"] == ["auto", "split", "segment"]
    scene = client.post("/v1/images", files=[("image", ("biden.jpg", (faces_dir / "biden.jpg").read_bytes(),
                                                        "image/jpeg"))]).json()
    jobs = {choice: generate(client, scene_image=scene["id"], identities=[{"id": obama_id}], width=192,
                             height=192, seed=1, regions=choice) for choice in ("segment", "auto")}
    for choice, done in jobs.items():
        assert done["state"] == "done", done["error"]
        assert done["request"]["regions"] == choice
    segment, auto = (png_pixels(client, jobs[c]["images"][0]["url"]) for c in ("segment", "auto"))
    assert np.abs(segment.astype(int) - auto).max() > 0  # the identity attended over the silhouette


def test_scene_image_sets_the_default_size_and_its_faces_become_the_identity(client, faces_dir, obama_id):
    scene = client.post("/v1/images", files=[("image", ("biden.jpg", (faces_dir / "biden.jpg").read_bytes(),
                                                        "image/jpeg"))]).json()
    # Without a size the scene's shape is used at 512 on its long side: above this server's 256 limit.
    response = client.post("/v1/generations", json={"prompt": "x", "scene_image": scene["id"], "steps": 2,
                                                    "identities": [{"id": obama_id}]})
    long_side = "width 512" if scene["width"] >= scene["height"] else "height 512"
    assert response.status_code == 400 and long_side in response.json()["error"]
    done = generate(client, scene_image=scene["id"], identities=[{"id": obama_id}], width=192, height=192, seed=1)
    assert done["state"] == "done", done["error"]
    assert png_pixels(client, done["images"][0]["url"]).shape == (192, 192, 3)
    refused = client.post("/v1/generations", json={"prompt": "x", "scene_image": scene["id"], **SMALL,
                                                   "identities": [{"id": obama_id, "region": [0, 0, 8, 8]}]})
    assert refused.status_code == 400 and "the scene's faces are: drop region" in refused.json()["error"]
