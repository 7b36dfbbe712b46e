"""The AUTOMATIC1111-compatible API (`create_app(..., a1111=True)`) driven by the real `webuiapi` client (PyPI,
unmodified) and by raw requests, against the real server on loopback with the tiny pipeline."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe

SIDE = 64
FACEID = "ip-adapter-faceid-plusv2_sd15 [6e14fc1a]"
TOKEN = "a1111-token-for-the-tests"


@pytest.fixture(scope="module")
def pipe():
    return new_pipe(style=True)


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    app = create_app(pipe, tmp_path_factory.mktemp("data"), queue_size=2, max_side=256, default_steps=2,
                     base_model="tiny", a1111=True)
    with BackgroundServer(app) as running:
        running.app = app
        yield running


@pytest.fixture(scope="module")
def api(server):
    return webuiapi.WebUIApi(host=server.host, port=server.port)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def half_mask(side: str, size=(SIDE, SIDE)) -> Image.Image:
    """White on the `side` ("left" or "right") half, black elsewhere."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    half = size[0] // 2
    if side == "left":
        mask[:, :half] = 255
    else:
        mask[:, half:] = 255
    return Image.fromarray(mask).convert("RGB")


class RegionUnit(webuiapi.ControlNetUnit):
    """webuiapi's unit plus the extension's `effective_region_mask` (webuiapi 0.9.17 predates that field): what a
    webuiapi user writes to send it."""

    def __init__(self, *args, region: Image.Image | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.region = region

    def to_dict(self):
        unit = super().to_dict()
        if self.region is not None:
            unit["effective_region_mask"] = webuiapi.raw_b64_img(self.region)
        return unit


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return b64(buffer.getvalue())


def unit(photo: bytes, **fields) -> dict:
    return {"enabled": True, "module": "ip-adapter_face_id_plus", "model": FACEID, "weight": 1.0,
            "image": b64(photo), **fields}


def txt2img(client, units=(), **fields):
    body = {"prompt": "two friends", "steps": 2, "width": SIDE, "height": SIDE, "seed": 3, **fields}
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": list(units)}}
    return client.post("/sdapi/v1/txt2img", json=body)


# ---------------------------------------------------------------------------------------------- webuiapi

def test_webuiapi_txt2img_with_two_ip_adapter_units_in_two_regions(api, faces_dir):
    obama, biden = (Image.open(faces_dir / name) for name in ("obama.jpg", "biden.jpg"))
    units = [RegionUnit(image=obama, module="ip-adapter_face_id_plus", model=FACEID, weight=0.8,
                        region=half_mask("left")),
             RegionUnit(image=biden, module="ip-adapter_face_id_plus", model=FACEID, weight=1.2,
                        region=half_mask("right"))]
    result = api.txt2img(prompt="two friends at the beach", negative_prompt="blurry", seed=11, steps=2,
                         cfg_scale=6, width=SIDE, height=SIDE, sampler_name="Euler a", batch_size=2,
                         controlnet_units=units)
    assert len(result.images) == 2 and all(i.size == (SIDE, SIDE) for i in result.images)
    assert result.info["all_seeds"] == [11, 12] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "two friends at the beach"
    report = result.info["facestudio"]
    assert [u["role"] for u in report["units"]] == ["identity", "identity"]
    assert report["ignored"] == [] and not report["interrupted"]
    for k, image in enumerate(result.images):
        # The PNG info: A1111's parameters text names both people and their regions, the JSON their masks.
        parameters = image.info["parameters"]
        assert parameters.startswith("two friends at the beach\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a")
        assert f"Seed: {11 + k}" in parameters and "CFG scale: 6" in parameters
        assert 'FaceStudio identities: "ControlNet 0, ControlNet 1"' in parameters
        assert 'FaceStudio strengths: "0.8, 1.2"' in parameters
        assert 'FaceStudio regions: "[\\"mask\\", \\"mask\\"]"' in parameters
        metadata = json.loads(image.info["facestudio"])
        assert metadata["ai_generated"] is True and image.info["AI-generated"] == "true"
        left, right = metadata["identities"]
        assert (left["name"], right["name"]) == ("ControlNet 0", "ControlNet 1")
        assert left["region_mask"]["box"] == [0, 0, SIDE // 2, SIDE] and left["region_mask"]["area"] == 0.5
        assert right["region_mask"]["box"] == [SIDE // 2, 0, SIDE, SIDE]
        assert left["region_mask"]["field"] == "alwayson_scripts.ControlNet.args[0].effective_region_mask"
        assert left["photos"] == ["alwayson_scripts.ControlNet.args[0].image"] and left["strength"] == 0.8
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))  # seeds 11 and 12


def test_webuiapi_listings_options_and_model_choice(api, server):
    assert api.get_sd_models()[0]["title"] == "tiny" and api.util_get_model_names() == ["tiny"]
    names = api.util_get_sampler_names()
    assert {"Euler a", "DPM++ 2M", "DDIM", "Euler", "UniPC", "LCM"} <= set(names)
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
    assert api.get_options()["sd_model_checkpoint"] == "tiny" and api.util_get_current_model() == "tiny"
    api.util_set_model("tiny")  # the loaded model: accepted
    refused = httpx.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors"})
    assert refused.status_code == 422 and "sd_model_checkpoint" in refused.json()["detail"]
    assert api.controlnet_model_list() == ["facestudio-identity_sd15", "ip-adapter_sd15"]
    assert "ip-adapter_face_id_plus" in api.controlnet_module_list()
    assert api.controlnet_version() == 3


def test_webuiapi_progress_polling_and_interrupt(api, server, faces_dir):
    obama = Image.open(faces_dir / "obama.jpg")
    results, seen = {}, []

    def generate(key, steps):
        results[key] = api.txt2img(prompt="a portrait", seed=1, steps=steps, width=SIDE, height=SIDE, n_iter=2,
                                   controlnet_units=[webuiapi.ControlNetUnit(image=obama, module="ip-adapter-auto",
                                                                             model=FACEID)])

    assert api.get_progress()["state"]["job_count"] == 0 and api.get_progress()["progress"] == 0
    thread = threading.Thread(target=generate, args=("polled", 40))
    thread.start()
    while thread.is_alive():
        progress = api.get_progress()
        if progress["state"]["job_count"]:
            seen.append((progress["progress"], progress["state"]["sampling_step"], progress["state"]["job_no"]))
        time.sleep(0.05)
    thread.join()
    assert len(results["polled"].images) == 2
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and 0.01 <= fractions[0] and fractions[-1] <= 1
    assert any(0.05 < f < 0.95 for f in fractions) and {n for _, _, n in seen} <= {0, 1}
    api.util_wait_for_ready(check_interval=0.05)  # idle again: progress 0, no job

    thread = threading.Thread(target=generate, args=("stopped", 200))
    thread.start()
    while api.get_progress()["state"]["sampling_step"] < 2:
        time.sleep(0.02)
    assert api.interrupt() == {}
    thread.join(30)
    stopped = results["stopped"]
    assert stopped.info["facestudio"]["interrupted"] and len(stopped.images) < 2


def test_the_token_works_as_bearer_and_as_basic_auth_password(pipe, tmp_path):
    app = create_app(pipe, tmp_path, token=TOKEN, max_side=256, default_steps=2, base_model="tiny", a1111=True)
    with BackgroundServer(app) as running:
        refused = httpx.get(running.url + "/sdapi/v1/sd-models")
        assert refused.status_code == 401 and set(refused.json()) == {"error", "detail", "body", "errors"}
        assert "basic auth" in refused.json()["detail"] and "Basic" in refused.headers["www-authenticate"]
        assert httpx.get(running.url + "/sdapi/v1/sd-models", auth=("anyone", "wrong")).status_code == 401
        assert httpx.get(running.url + "/controlnet/model_list").status_code == 401
        bearer = httpx.get(running.url + "/sdapi/v1/sd-models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200
        api = webuiapi.WebUIApi(host=running.host, port=running.port, username="facestudio", password=TOKEN)
        assert api.get_sd_models()[0]["title"] == "tiny"
        assert len(api.txt2img(prompt="x", steps=1, width=SIDE, height=SIDE).images) == 1


# ---------------------------------------------------------------------------------------------- bad requests

def photo(faces_dir, name="obama.jpg") -> bytes:
    return (faces_dir / name).read_bytes()


BAD_UNITS = {
    # case: (unit fields over a good unit, status, words the message must contain)
    "unknown module": ({"module": "canny"}, 422, "args[0].module 'canny': not an IP-Adapter preprocessor"),
    "unknown model": ({"model": "control_v11p_sd15_canny [d14c016b]"}, 422, "args[0].model"),
    "faceid module, style model": ({"model": "ip-adapter_sd15"}, 422, "args[0].module 'ip-adapter_face_id_plus'"),
    "non-image base64": ({"image": b64(b"just some text, not an image\n" * 20)}, 415,
                         "args[0].image: not an image by its content"),
    "not base64": ({"image": "@@not base64@@"}, 422, "args[0].image: not base64"),
    "a URL": ({"image": "https://example.com/me.jpg"}, 422, "args[0].image: a URL; send the image itself"),
    "a path": ({"image": "/etc/passwd"}, 415, "args[0].image: not an image by its content"),
    "mask of the wrong size": ({"effective_region_mask": png_b64(half_mask("left", (100, 50)))}, 422,
                               "args[0].effective_region_mask: the mask is 100x50 pixels but the image is 64x64"),
    "weight out of range": ({"weight": 7}, 422, "args[0].weight"),
}


@pytest.mark.parametrize("case", BAD_UNITS)
def test_a_bad_unit_gets_a_4xx_naming_its_field(client, faces_dir, case):
    fields, status, words = BAD_UNITS[case]
    response = txt2img(client, [unit(photo(faces_dir), **fields)])
    assert response.status_code == status, response.text
    problem = response.json()
    assert set(problem) == {"error", "detail", "body", "errors"}
    assert words in problem["errors"] and words in problem["detail"]
    assert "alwayson_scripts.controlnet." in problem["errors"]


def test_other_bad_requests_in_a1111_shape(client, faces_dir):
    invalid = txt2img(client, steps=0)
    assert invalid.status_code == 422 and invalid.json()["error"] == "RequestValidationError"
    assert invalid.json()["detail"][0]["loc"] == ["body", "steps"] and "steps" in invalid.json()["errors"]
    script = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert script.status_code == 422 and "always on script 'ADetailer' not found" in script.json()["detail"]
    sampler = txt2img(client, sampler_name="Heun")
    assert sampler.status_code == 422 and "sampler_name 'Heun'" in sampler.json()["detail"]
    big = txt2img(client, width=512)
    assert big.status_code == 422 and "width 512: this server makes images at most 256" in big.json()["detail"]
    many = txt2img(client, batch_size=4, n_iter=4)
    assert many.status_code == 422 and "batch_size * n_iter 16" in many.json()["detail"]
    mix = txt2img(client, [unit(photo(faces_dir))], facestudio={"mix": [0.5, 0.5]})
    assert mix.status_code == 422 and "facestudio.mix" in mix.json()["detail"]


def test_disabled_units_are_skipped_and_ignored_fields_are_named(client, faces_dir):
    response = txt2img(client, [unit(photo(faces_dir), enabled=False)], enable_hr=True, restore_faces=True,
                       hr_scale=2, made_up_field=1)
    assert response.status_code == 200, response.text
    report = json.loads(response.json()["info"])["facestudio"]
    assert report["units"] == [] and "skipped" in report["notes"][0]
    assert report["ignored"] == ["enable_hr", "restore_faces"] and report["unknown"] == ["made_up_field"]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert "FaceStudio identities" not in image.info["parameters"]


# ---------------------------------------------------------------------------------------------- same as /v1

def test_the_same_request_through_v1_and_sdapi_gives_the_same_pixels(client, faces_dir):
    ids = []
    for name in ("obama.jpg", "biden.jpg"):
        uploaded = client.post("/v1/identities", files=[("photos", (name, photo(faces_dir, name), "image/jpeg"))])
        ids.append(uploaded.json()["id"])
    job = client.post("/v1/generations", json={
        "prompt": "two friends", "negative_prompt": "blurry", "seed": 21, "steps": 3, "width": SIDE,
        "height": SIDE, "text_guidance_scale": 5.0, "reference_guidance_scale": 3.0, "count": 2,
        "scheduler": "dpmpp-2m-karras",
        "identities": [{"id": ids[0], "region": [0, 0, SIDE // 2, SIDE], "strength": 0.9},
                       {"id": ids[1], "region": [SIDE // 2, 0, SIDE, SIDE], "strength": 1.1}]}).json()
    deadline = time.monotonic() + 60
    while (status := client.get(f"/v1/generations/{job['id']}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["state"] == "done"
    v1 = [np.asarray(Image.open(io.BytesIO(client.get(i["url"]).content)).convert("RGB")) for i in status["images"]]

    response = txt2img(client, [
        unit(photo(faces_dir, "obama.jpg"), weight=0.9, effective_region_mask=png_b64(half_mask("left"))),
        unit(photo(faces_dir, "biden.jpg"), weight=1.1, effective_region_mask=png_b64(half_mask("right")))],
        prompt="two friends", negative_prompt="blurry", seed=21, steps=3, cfg_scale=5.0, batch_size=2,
        sampler_name="DPM++ 2M", scheduler="karras", facestudio={"reference_scale": 3.0})
    assert response.status_code == 200, response.text
    sdapi = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB")) for i in response.json()["images"]]
    assert len(v1) == len(sdapi) == 2
    for a, b in zip(v1, sdapi):
        assert np.array_equal(a, b)
    assert not np.array_equal(sdapi[0], sdapi[1])


def test_a_full_queue_answers_429_in_a1111_shape(client, faces_dir):
    long = {"prompt": "long", "width": 128, "height": 128, "steps": 200, "count": 8}
    jobs = [client.post("/v1/generations", json=long).json()["id"]]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/generations/{jobs[0]}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    jobs += [client.post("/v1/generations", json=long).json()["id"] for _ in range(2)]
    try:
        full = txt2img(client, [unit(photo(faces_dir))])
        assert full.status_code == 429 and full.json()["error"] == "QueueFull"
        assert "queue is full" in full.json()["detail"] and int(full.headers["Retry-After"]) >= 1
    finally:
        for job in jobs:
            client.post(f"/v1/generations/{job}/cancel")
    deadline = time.monotonic() + 30
    while any(client.get(f"/v1/generations/{j}").json()["state"] in ("queued", "running") for j in jobs):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert txt2img(client, [unit(photo(faces_dir))]).status_code == 200


def test_without_the_flag_there_is_no_a1111_api(pipe, tmp_path):
    with BackgroundServer(create_app(pipe, tmp_path)) as running:
        assert httpx.get(running.url + "/sdapi/v1/sd-models").status_code == 404
        assert "/sdapi/v1/txt2img" not in httpx.get(running.url + "/openapi.json").json()["paths"]


def test_facestudio_extras_and_a_style_unit(client, faces_dir):
    style = {"enabled": True, "module": "ip-adapter_clip_h", "model": "ip-adapter_sd15 [6a3f2d1c]", "weight": 0.5,
             "image": {"image": b64(photo(faces_dir, "biden.jpg")), "mask": None}}
    response = txt2img(client, [unit(photo(faces_dir, "obama.jpg")), style, unit(photo(faces_dir, "biden.jpg"))],
                       facestudio={"names": ["Barack", "Joe"], "mix": [0.7, 0.3], "reference_scale": 2.5})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert [u["role"] for u in info["facestudio"]["units"]] == ["identity", "style", "identity"]
    metadata = json.loads(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).info["facestudio"])
    assert [p["name"] for p in metadata["identities"]] == ["Barack", "Joe"] and metadata["mix"] == [0.7, 0.3]
    assert metadata["reference_guidance_scale"] == 2.5 and metadata["text_guidance_scale"] == 7.0
    assert metadata["style_strength"] == 0.5
    assert metadata["style_image"] == "alwayson_scripts.controlnet.args[1].image"
    names = txt2img(client, [unit(photo(faces_dir))], facestudio={"names": ["a", "b"]})
    assert names.status_code == 422 and "facestudio.names: 2 entries for 1 identity units" in names.json()["detail"]


def test_a_scene_image_in_the_extras(client, faces_dir):
    response = txt2img(client, [unit(photo(faces_dir, "biden.jpg"))], width=256, height=256, steps=1,
                       facestudio={"scene_image": b64(photo(faces_dir, "obama.jpg")), "scene_faces": [0]})
    assert response.status_code == 200, response.text
    metadata = json.loads(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).info["facestudio"])
    assert metadata["scene_image"] == "facestudio.scene_image" and metadata["scene_faces"] == [0]
    masked = txt2img(client, [unit(photo(faces_dir, "biden.jpg"), effective_region_mask=png_b64(half_mask("left")))],
                     facestudio={"scene_image": b64(photo(faces_dir, "obama.jpg"))})
    assert masked.status_code == 422 and "drop effective_region_mask" in masked.json()["detail"]


def test_a_client_that_goes_away_cancels_its_job(server, client, faces_dir):
    body = {"prompt": "long", "steps": 200, "width": 128, "height": 128, "n_iter": 8,
            "alwayson_scripts": {"controlnet": {"args": [unit(photo(faces_dir))]}}}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=3)
    deadline = time.monotonic() + 20
    while client.get("/v1/queue").json()["running"] or client.get("/sdapi/v1/progress").json()["state"]["job_count"]:
        assert time.monotonic() < deadline, "the abandoned job still runs"  # 8 x 200 steps would take minutes
        time.sleep(0.05)


def test_facestudio_serve_a1111_as_a_user_starts_it(tmp_path, faces_dir):
    from test_server_cli import start_serve, stop, wait_until_listening

    process, port, lines = start_serve(tmp_path, "--a1111", "--host", "0.0.0.0")
    try:
        output = "".join(lines)
        assert "AUTOMATIC1111-compatible API at" in output, output
        token = output.split("Authorization: Bearer ", 1)[1].split("'", 1)[0]
        wait_until_listening(port)
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="facestudio", password=token)
        result = api.txt2img(prompt="a portrait", steps=1, width=SIDE, height=SIDE, seed=4, controlnet_units=[
            webuiapi.ControlNetUnit(image=Image.open(faces_dir / "obama.jpg"), module="ip-adapter-auto",
                                    model=FACEID)])
        assert len(result.images) == 1 and "FaceStudio identities: ControlNet 0" in result.images[0].info["parameters"]
        assert httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=30).status_code == 401
    finally:
        stop(process)


def test_progress_carries_the_step_preview_with_the_tiny_decoder(tmp_path, faces_dir):
    from facestudio.decoding import load_tiny_decoder
    from facestudio.models import tiny_autoencoder

    pipe = new_pipe()
    load_tiny_decoder(pipe, tiny_autoencoder())
    app = create_app(pipe, tmp_path, max_side=128, default_steps=2, base_model="tiny", a1111=True)
    with BackgroundServer(app) as running:
        api = webuiapi.WebUIApi(host=running.host, port=running.port)
        done, previews = [], []
        thread = threading.Thread(target=lambda: done.append(api.txt2img(prompt="x", steps=60, width=SIDE,
                                                                          height=SIDE)))
        thread.start()
        while thread.is_alive():
            current = api.get_progress().get("current_image")
            if current:
                previews.append(Image.open(io.BytesIO(base64.b64decode(current))))
            skipped = httpx.get(running.url + "/sdapi/v1/progress", params={"skip_current_image": True}).json()
            assert skipped["current_image"] is None
            time.sleep(0.05)
        thread.join()
        assert len(done[0].images) == 1 and previews and previews[-1].size[0] > 0
