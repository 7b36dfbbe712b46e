"""Live previews: with the tiny decoder loaded, the progress stream carries each step's image, and the page shows
it in its preview <img> during the job (real server, real headless Chromium)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from conftest import launch_chromium, new_page
from facestudio.decoding import load_tiny_decoder
from facestudio.models import tiny_autoencoder
from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pipe = new_pipe()
    pipe.default_side = 64
    load_tiny_decoder(pipe, tiny_autoencoder())
    app = create_app(pipe, tmp_path_factory.mktemp("data"), max_side=128, default_steps=6, base_model="tiny")
    with BackgroundServer(app) as running:
        yield running


def test_the_event_stream_carries_a_preview_image(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v1/models").json()["preview"] is True
        job = client.post("/v1/generations", json={"prompt": "a photo", "steps": 4}).json()
        previews, end = [], None
        with client.stream("GET", f"/v1/generations/{job['id']}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    status = json.loads(line[6:])
                    if status.get("preview"):
                        previews.append(status["preview"])
                    if status["state"] not in ("queued", "running"):
                        end = status
                        break
        assert end["state"] == "done" and previews
        head, data = previews[-1].split(",", 1)
        assert head == "data:image/jpeg;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (64, 64)
        # the tiny decoder for the final image too, when a job asks
        tiny = client.post("/v1/generations", json={"prompt": "a photo", "steps": 2, "decoder": "tiny"}).json()
        assert tiny["request"]["decoder"] == "tiny"


def test_the_page_shows_a_preview_during_a_job(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path / "profile", viewport={"width": 1366, "height": 900})
        try:
            page = new_page(context)
            page.goto(server.url + "/")
            page.wait_for_function("() => document.querySelector('#model-info').textContent.includes('tiny')")
            page.wait_for_function("() => document.querySelector('#scheduler').options.length > 5")
            page.select_option("#scheduler", "dpmpp-2m-karras")
            assert page.is_hidden("#preview")
            page.fill("#prompt", "a portrait")
            with page.expect_request(lambda r: r.url.endswith("/v1/generations") and r.method == "POST") as sent:
                page.click("#generate")
            assert sent.value.post_data_json["scheduler"] == "dpmpp-2m-karras"
            page.wait_for_function("() => { const i = document.querySelector('#preview');"
                                   " return !i.hidden && i.src.startsWith('data:image/jpeg') && i.naturalWidth > 0; }")
            page.wait_for_selector("#gallery figure img")
            assert page.errors == []
        finally:
            context.close()
