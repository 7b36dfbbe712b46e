"""Managing what the server keeps: identities (one per set of photos, distinct names, rename, thumbnail, delete),
scene images that must show a face, and results (delete, the gallery's pages)."""

from __future__ import annotations

import io
import shutil

import httpx
import pytest
from PIL import Image

from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe
from test_server_api import generate, upload_identity


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(new_pipe(), tmp_path_factory.mktemp("data"), max_side=256, default_steps=1, base_model="tiny")
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as c:
        c.app = app
        yield c


def test_the_same_photo_twice_is_one_identity_and_names_stay_distinct(client, faces_dir, tmp_path):
    first = upload_identity(client, faces_dir / "obama.jpg")
    again = upload_identity(client, faces_dir / "obama.jpg")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["name"] == "obama"
    # another photo under the same file name: a new identity, numbered
    (tmp_path / "other").mkdir()
    shutil.copy(faces_dir / "obama2.jpg", tmp_path / "other" / "obama.jpg")
    other = upload_identity(client, tmp_path / "other" / "obama.jpg")
    assert other.status_code == 201 and other.json()["name"] == "obama 2"
    names = [i["name"] for i in client.get("/v1/identities").json()["identities"]]
    assert names.count("obama") == 1 and names.count("obama 2") == 1


def test_rename_thumbnail_and_delete(client, faces_dir):
    biden = upload_identity(client, faces_dir / "biden.jpg").json()
    thumbnail = client.get(biden["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(thumbnail.content))
    assert max(picture.size) == 96 and min(picture.size) > 48
    renamed = client.patch(f"/v1/identities/{biden['id']}", json={"name": "  Joe  "})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Joe"
    assert client.get(f"/v1/identities/{biden['id']}").json()["name"] == "Joe"
    obama = upload_identity(client, faces_dir / "obama.jpg").json()
    taken = client.patch(f"/v1/identities/{obama['id']}", json={"name": "Joe"})
    assert taken.status_code == 409 and "another identity has it" in taken.json()["error"]
    blank = client.patch(f"/v1/identities/{obama['id']}", json={"name": "   "})
    assert blank.status_code == 422 and "name" in blank.json()["error"]
    assert client.patch("/v1/identities/0123456789abcdef", json={"name": "x"}).status_code == 404
    assert client.delete(f"/v1/identities/{biden['id']}").status_code == 204
    assert client.get(biden["thumbnail"]).status_code == 404
    assert biden["id"] not in [i["id"] for i in client.get("/v1/identities").json()["identities"]]


def test_a_scene_image_without_a_face_is_refused_at_upload(client, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (90, 140, 200)).save(buffer, "PNG")
    files = {"image": ("sky.png", buffer.getvalue(), "image/png")}
    refused = client.post("/v1/images", files=files, data={"purpose": "scene"})
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("sky.png: no face found; a scene image")
    as_style = client.post("/v1/images", files=files, data={"purpose": "style"})
    assert as_style.status_code == 201 and as_style.json()["faces"] == []
    assert client.post("/v1/images", files=files, data={"purpose": "other"}).status_code == 422


def test_results_can_be_deleted_and_the_gallery_pages(client):
    jobs = [generate(client, seed=s, count=2 if s == 30 else 1, steps=1) for s in (10, 20, 30)]
    assert [j["state"] for j in jobs] == ["done"] * 3
    page1 = client.get("/v1/generations", params={"limit": 2}).json()
    page2 = client.get("/v1/generations", params={"limit": 2, "offset": 2}).json()
    assert [j["seed"] for j in page1 + page2][:3] == [30, 20, 10]
    two = jobs[2]
    first = two["images"][0]
    assert client.delete(first["url"]).status_code == 204
    assert client.get(first["url"]).status_code == 404
    left = client.get(f"/v1/generations/{two['id']}").json()["images"]
    assert [(i["name"], i["seed"]) for i in left] == [(two["images"][1]["name"], 31)]  # its seed kept
    assert client.delete(first["url"]).status_code == 404
