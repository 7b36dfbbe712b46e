"""The web page in real headless Chromium (Debian's, driven by Playwright) against the real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facestudio.server import BackgroundServer, create_app
from conftest import launch_chromium, new_page
from test_pipeline import new_pipe

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pipe = new_pipe()
    pipe.default_side = 64  # the tiny UNet's natural size: what a job makes when the page sets no size
    app = create_app(pipe, tmp_path_factory.mktemp("data"), max_side=256, default_steps=3, base_model="tiny")
    with BackgroundServer(app) as running:
        running.app, running.pipe = app, pipe
        yield running


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A fresh profile folder per test: nothing carried over from another run.
        context = launch_chromium(playwright, tmp_path / "chromium-profile", viewport={"width": 1366, "height": 900})
        try:
            yield new_page(context)
        finally:
            context.close()


def artifacts_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FACESTUDIO_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_upload_draw_generate_and_see_the_result(page, server, faces_dir, tmp_path):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#model-info').textContent.includes('tiny')")
    # No width or height set: the fields show the pipeline's default side (from /v1/models), the canvas uses it.
    page.wait_for_function("() => document.querySelector('#width').placeholder === '64'")
    assert page.input_value("#width") == page.input_value("#height") == ""
    assert page.get_attribute("#height", "placeholder") == "64"
    for field, value in (("#steps", "3"), ("#seed", "11")):
        page.fill(field, value)

    person = page.locator("#person-1")
    person.locator("input.photos").set_input_files(str(faces_dir / "obama.jpg"))
    status = "() => document.querySelector('#person-1 .faces-status').textContent"
    page.wait_for_function(f"{status}.includes('1 face found')")
    person.locator("canvas.faces").wait_for()  # the photo with its face drawn
    assert person.locator("canvas.faces").count() == 1

    person.locator("button.draw-region").click()
    box = page.locator("#regions").bounding_box()
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 10, steps=4)
    page.mouse.up()
    region = [int(person.locator(f"input.r[data-i='{i}']").input_value()) for i in range(4)]
    assert 0 <= region[0] < region[2] <= 64 and 0 <= region[1] < region[3] <= 64 and region[2] <= 40

    page.fill("#prompt", "an astronaut, photo")
    with page.expect_request(lambda r: r.url.endswith("/v1/generations") and r.method == "POST") as sent:
        page.click("#generate")
    body = sent.value.post_data_json
    assert "width" not in body and "height" not in body and body["seed"] == 11, body  # the server's default size
    page.wait_for_function("() => { const p = document.querySelector('#progress');"
                           " return p.max > 1 && p.value === p.max; }")
    page.wait_for_selector("#gallery figure img")
    page.wait_for_function("() => document.querySelector('#gallery img').naturalWidth === 64")
    assert "seed 11" in page.text_content("#gallery figcaption")
    assert page.text_content("#progress-text").startswith("done")

    # The job the page sent carried the drawn region; the page loaded nothing from elsewhere.
    job = next(iter(server.app.state.jobs.values()))
    assert tuple(job.plan.people[0].region) == tuple(float(v) for v in region)
    assert all(url.startswith(server.url) or url.startswith("blob:") for url in requests), requests
    assert page.errors == []

    shot = artifacts_dir(tmp_path) / "server-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # "Use these settings again" puts the seed and region back.
    page.fill("#seed", "")
    page.click("#gallery button")
    assert page.input_value("#seed") == "11" and page.input_value("#width") == ""  # unset size stays unset
    page.wait_for_function("() => document.querySelector('#person-1 input.r').value !== ''")



def test_the_region_source_is_chosen_on_the_page(page, server):
    from facestudio.regions import available_choices

    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#model-info').textContent.includes('tiny')")
    options = page.eval_on_selector_all("#regions-source option", "options => options.map((o) => o.value)")
    assert options == available_choices()  # what this server accepts, from /v1/models
    page.fill("#steps", "1")
    page.select_option("#regions-source", "split")
    # the response, not only the request: the job is on the server once it has answered
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as sent:
        page.click("#generate")
    assert sent.value.request.post_data_json["regions"] == "split"
    page.wait_for_selector("#gallery figure img")
    assert any(job.plan.request.regions == job.plan.settings.regions == "split"
               for job in server.app.state.jobs.values())
    assert page.errors == []


def test_a_photo_without_a_face_is_explained_on_the_card(page, server, faces_dir, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    page.goto(server.url + "/")
    page.locator("#person-1 input.photos").set_input_files(str(text))
    status = "() => document.querySelector('#person-1 .faces-status').textContent"
    page.wait_for_function(f"{status}.includes('not an image')")
    assert "error" in page.get_attribute("#person-1 .faces-status", "class")


def test_regions_can_be_set_with_the_keyboard_and_mix_appears_for_two_people(page, server, faces_dir):
    page.goto(server.url + "/")
    # With a scene image and no size set, the canvas takes the scene's shape at the default side, as the server
    # will (626x1200 -> 32x64 at side 64).
    page.wait_for_function("() => document.querySelector('#width').placeholder === '64'")
    page.set_input_files("#scene-file", str(faces_dir / "obama2.jpg"))
    page.wait_for_function("() => document.querySelector('#width').placeholder === '32'")
    assert page.get_attribute("#height", "placeholder") == "64"
    assert page.evaluate("() => [document.querySelector('#regions').width, document.querySelector('#regions').height]"
                         ) == [160, 320]
    page.click("#scene-clear")
    page.fill("#width", "256")
    page.fill("#height", "128")
    page.dispatch_event("#width", "change")
    page.focus("#person-1 button.draw-region")
    page.keyboard.press("Enter")  # selects person 1 and moves the focus to the canvas
    assert page.evaluate("() => document.activeElement.id") == "regions"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    region = [int(page.input_value(f"#person-1 input.r[data-i='{i}']")) for i in range(4)]
    assert region == [64 + 8, 32, 192 + 8, 96 + 8]  # the centred default box, moved right, grown down
    assert page.evaluate("() => [request().width, request().height]") == [256, 128]  # set sizes are sent
    assert page.is_hidden("#mix-box")
    page.click("#add-person")
    assert page.is_visible("#mix-box") and page.text_content("#person-2 legend") == "Person 2"
    page.fill("#person-2 input.r[data-i='0']", "10")
    for i, v in ((1, "0"), (2, "100"), (3, "128")):
        page.fill(f"#person-2 input.r[data-i='{i}']", v)
    page.dispatch_event("#person-2 input.r[data-i='3']", "change")
    # Person 2's typed box is drawn in its colour (teal); outside every box the canvas stays dark.
    pixel = "([x, y]) => [...document.querySelector('#regions').getContext('2d').getImageData(x, y, 1, 1).data]"
    inside, outside = page.evaluate(pixel, [60, 80]), page.evaluate(pixel, [300, 150])
    assert inside[1] > outside[1] + 30 and outside[:3] == [43, 43, 48]


def test_with_a_token_the_page_takes_it_from_the_address_and_sends_it(page, server, faces_dir, tmp_path):
    token = "browser-test-token-0123456789"
    app = create_app(server.pipe, tmp_path / "data", token=token, base_model="tiny")
    with BackgroundServer(app) as guarded:
        page.goto(guarded.url + "/#token=" + token)
        page.wait_for_function("() => document.querySelector('#model-info').textContent.includes('tiny')")
        assert "token" not in page.url and page.is_hidden("#token-box")
        page.locator("#person-1 input.photos").set_input_files(str(faces_dir / "obama.jpg"))
        page.wait_for_function("() => document.querySelector('#person-1 .faces-status').textContent"
                               ".includes('1 face found')")
        assert len(app.state.data.list_identities()[0]) == 1
        page.evaluate("() => sessionStorage.clear()")
        page.goto(guarded.url + "/")  # no token: the page asks for it
        page.wait_for_selector("#token-box", state="visible")


def test_person_cards_share_one_identity_list_refreshed_after_an_upload(page, server, faces_dir):
    lists = []
    page.on("request", lambda r: lists.append(r.url) if r.method == "GET" and r.url.endswith("/v1/identities")
            else None)
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelector('#model-info').textContent.includes('tiny')")
    page.click("#add-person")
    page.click("#add-person")
    page.wait_for_selector("#person-3")
    assert len(lists) == 1  # three cards, one list request
    page.locator("#person-1 input.photos").set_input_files(str(faces_dir / "obama.jpg"))
    page.wait_for_function("() => document.querySelector('#person-1 .faces-status').textContent"
                           ".includes('1 face found')")
    page.click("#add-person")
    uploaded = page.evaluate("() => state.people[0].identity")
    page.wait_for_function(f"() => [...document.querySelectorAll('#person-4 .saved option')]"
                           f".some((o) => o.value === '{uploaded}')")
    assert len(lists) == 2 and not page.errors
