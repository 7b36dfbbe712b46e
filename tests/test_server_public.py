"""The server with a public adapter loaded (a plus-face checkpoint in the tiny UNet's public layout, random weights,
the tiny CLIP encoder): identities are encoded the way that adapter reads them, and identities stored under
another adapter (a data folder kept across a restart with another preset) are refused with a 4xx naming both."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from facestudio.guidance import public_identity as pid
from facestudio.imaging import load_image, to_array
from facestudio.guidance import public_layouts as layouts
from facestudio.models import tiny_components
from facestudio.pipeline import FaceStudioPipeline, IdentityInput
from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe
from test_server_api import SMALL, generate, png_pixels, upload_identity

pytest.importorskip("peft", minversion="0.17")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a .peft_config. attribute:UserWarning")


@pytest.fixture(scope="module")
def plus_face_pipe(tmp_path_factory, analyzer) -> FaceStudioPipeline:
    folder = tmp_path_factory.mktemp("plus-face")
    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    state = {k: 0.2 * torch.randn(shape, generator=generator)
             for k, shape in layouts.plus_face(pipe.unet, clip_dim=32).items()}
    save_file(state, str(folder / "plus-face.safetensors"))
    config = pid.PublicIdentityConfig(projection="plus-face", recognizer="", image_encoder="tiny",
                                      cross_attention_dim=64)
    pipe.load_public_adapters((str(folder), "plus-face.safetensors", None), identity_config=config,
                              face_analyzer=analyzer)
    return pipe


def serve(pipe, data_dir):
    return BackgroundServer(create_app(pipe, data_dir, default_steps=2, max_side=256, base_model="tiny"))


def test_identity_upload_and_generation_with_a_public_adapter(plus_face_pipe, tmp_path, faces_dir):
    with serve(plus_face_pipe, tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        response = upload_identity(client, faces_dir / "obama.jpg", faces_dir / "obama2.jpg", name="Barack")
        assert response.status_code == 201, response.text
        uploaded = response.json()
        assert uploaded["recognizer"] == plus_face_pipe.identity_signature() != "dlib"
        # Stored as encoded, tokens per photo included (plus-face's CLIP tokens: not dlib's 64 per photo).
        stored = server.config.app.state.data.load_identity(uploaded["id"])
        photos = [to_array(load_image(faces_dir / n)) for n in ("obama.jpg", "obama2.jpg")]
        analyzer = plus_face_pipe.get_face_analyzer()
        direct = plus_face_pipe.encode_photos(photos, [analyzer.detect(p)[0] for p in photos], name="Barack")
        assert stored.tokens_per_photo == direct.tokens_per_photo > 0 and stored.num_photos == 2
        assert np.array_equal(stored.detail, direct.detail) and stored.recognizer == direct.recognizer

        done = generate(client, seed=5, identities=[{"id": uploaded["id"]}])
        assert done["state"] == "done", done
        expected = plus_face_pipe("a portrait photo", identities=[IdentityInput(identity=stored)],
                                  num_inference_steps=2, width=64, height=64,
                                  generator=torch.Generator().manual_seed(5)).images[0]
        assert np.array_equal(png_pixels(client, done["images"][0]["url"]), np.asarray(expected))


def test_an_identity_stored_under_another_adapter_is_refused_after_a_restart(plus_face_pipe, tmp_path, faces_dir):
    with serve(new_pipe(), tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        response = upload_identity(client, faces_dir / "obama.jpg")
        assert response.status_code == 201 and response.json()["recognizer"] == "dlib"
        identity_id = response.json()["id"]
    # The same data folder, served again with the plus-face preset.
    with serve(plus_face_pipe, tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert identity_id in [i["id"] for i in client.get("/v1/identities").json()["identities"]]
        response = client.post("/v1/generations", json={"prompt": "a portrait", **SMALL,
                                                         "identities": [{"id": identity_id}]})
        assert 400 <= response.status_code < 500, response.text
        error = response.json()["error"]
        assert "'dlib'" in error and repr(plus_face_pipe.identity_signature()) in error and identity_id in error
        assert client.get("/v1/generations").json() == []  # refused at submission: no failed job left behind
