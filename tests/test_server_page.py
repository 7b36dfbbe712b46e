"""The page in real headless Chromium at a laptop's and a phone's size: what the user sees after Generate
(positions in the viewport, not only that elements exist), "Use these settings again", regions that follow the
size, errors that go once fixed, and managing identities and results. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from conftest import launch_chromium, new_page
from facestudio.server import BackgroundServer, create_app
from test_pipeline import new_pipe
from test_server_browser import artifacts_dir

LAPTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
READY = "() => document.querySelector('#model-info').textContent.includes('tiny')"
FOUND = "() => document.querySelector('{card} .faces-status').textContent.includes('1 face found')"
DONE = "() => document.querySelector('#progress-text').textContent.startsWith('{state}')"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pipe = new_pipe(style=True)
    pipe.default_side = 64
    app = create_app(pipe, tmp_path_factory.mktemp("data"), max_side=256, default_steps=2, base_model="tiny")
    with BackgroundServer(app) as running:
        running.app = app
        yield running


@pytest.fixture
def open_page(tmp_path, server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        contexts = []

        def open_at(viewport, url=None):
            context = launch_chromium(playwright, tmp_path / f"profile-{len(contexts)}", viewport=viewport)
            contexts.append(context)
            page = new_page(context)
            page.on("dialog", lambda d: d.accept())  # the delete confirmations
            page.goto((url or server.url) + "/")
            page.wait_for_function(READY)
            return page

        try:
            yield open_at
        finally:
            for context in contexts:
                context.close()


def in_view(page, selector: str) -> dict:
    """The element's box, asserted to lie wholly inside the viewport."""
    box = page.locator(selector).first.bounding_box()
    width, height = page.evaluate("() => [innerWidth, innerHeight]")
    assert box is not None, selector
    assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width + 0.5 and \
        box["y"] + box["height"] <= height + 0.5, (selector, box, width, height)
    return box


def no_horizontal_scroll(page):
    scroll, width = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert scroll <= width, f"the page is {scroll} px wide in a {width} px window"


def upload(page, card: str, path):
    page.locator(f"{card} input.photos").set_input_files(str(path))
    page.wait_for_function(FOUND.format(card=card))


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1280x800", "390x844"])
def test_after_generate_progress_and_the_newest_result_are_in_view(open_page, faces_dir, tmp_path, viewport):
    page = open_page(viewport)
    no_horizontal_scroll(page)
    upload(page, "#person-1", faces_dir / "obama.jpg")
    page.fill("#seed", "5")
    in_view(page, "#generate")  # Generate is reachable without scrolling
    scrolled = page.evaluate("() => scrollY")
    page.click("#generate", no_wait_after=True)
    page.wait_for_function(DONE.format(state="done"))
    page.wait_for_function("() => document.querySelector('#gallery figure img')?.naturalWidth === 64")
    page.screenshot(path=str(artifacts_dir(tmp_path) / f"after-generate-{viewport['width']}.png"))
    in_view(page, "#progress")
    in_view(page, "#progress-text")
    in_view(page, "#gallery figure")  # the newest result, image and caption
    assert "seed 5" in page.text_content("#gallery figure figcaption")
    no_horizontal_scroll(page)
    if viewport is LAPTOP:
        assert page.evaluate("() => scrollY") == scrolled  # nothing moved: it was in view beside the settings
    assert page.errors == []


def test_the_phone_layout_has_no_horizontal_overflow_anywhere(open_page, faces_dir, tmp_path):
    page = open_page(PHONE)
    page.click("#add-person")
    upload(page, "#person-1", faces_dir / "obama.jpg")
    page.screenshot(path=str(artifacts_dir(tmp_path) / "phone-full.png"), full_page=True)
    no_horizontal_scroll(page)
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter((e) => {
        const r = e.getBoundingClientRect(); return r.width && (r.right > innerWidth + 0.5 || r.left < -0.5);
      }).map((e) => e.tagName + '#' + e.id + '.' + e.className)""")
    assert wide == []


def test_use_these_settings_again_rebuilds_the_same_job(open_page, server, faces_dir):
    page = open_page(LAPTOP)
    upload(page, "#person-1", faces_dir / "obama.jpg")
    page.set_input_files("#style-file", str(faces_dir / "biden.jpg"))
    page.set_input_files("#scene-file", str(faces_dir / "obama2.jpg"))
    page.wait_for_function("() => state.style && state.scene")
    page.fill("#seed", "9")
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as sent:
        page.click("#generate")
    job = sent.value.json()
    page.wait_for_function(DONE.format(state="done"))
    # The form changed since: another person, mix ticked, no style or scene image.
    page.click("#add-person")
    upload(page, "#person-2", faces_dir / "biden.jpg")
    page.check("#mix-on")
    page.click("#style-clear")
    page.click("#scene-clear")
    page.click("#gallery figure button:text('Use these settings again')")
    page.wait_for_function("() => state.style && state.scene && state.people.length === 1 && state.people[0].identity")
    again = page.evaluate("() => request()")
    original = job["request"]
    assert "mix" not in again and not page.is_checked("#mix-on")  # the job had no mix
    for key in ("style_image", "scene_image", "prompt", "negative_prompt", "steps", "text_guidance_scale",
                "reference_guidance_scale", "style_strength"):
        assert again[key] == original[key], key
    assert [p["id"] for p in again["identities"]] == [p["id"] for p in original["identities"]]
    assert again["seed"] == 9
    # the saved identity's face is shown on its card
    page.wait_for_function("() => document.querySelector('#person-1 .thumbs img')?.naturalWidth > 0")
    assert page.errors == []


def test_regions_follow_the_size_and_the_job_runs(open_page, faces_dir):
    page = open_page(LAPTOP)
    upload(page, "#person-1", faces_dir / "obama.jpg")
    page.fill("#width", "128")
    page.fill("#height", "128")
    for i, v in enumerate(("0", "0", "64", "128")):
        page.fill(f"#person-1 input.r[data-i='{i}']", v)
    page.dispatch_event("#person-1 input.r[data-i='3']", "change")
    page.fill("#width", "64")
    page.fill("#height", "64")
    assert [page.input_value(f"#person-1 input.r[data-i='{i}']") for i in range(4)] == ["0", "0", "32", "64"]
    assert page.evaluate("() => state.people[0].region") == [0, 0, 32, 64]
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as sent:
        page.click("#generate")
    assert sent.value.status == 202 and sent.value.json()["request"]["identities"][0]["region"] == [0, 0, 32, 64]
    page.wait_for_function(DONE.format(state="done"))


def test_an_error_goes_once_the_card_is_fixed_and_a_refused_job_says_so(open_page, faces_dir, tmp_path):
    page = open_page(LAPTOP)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.locator("#person-1 input.photos").set_input_files(str(bad))
    page.wait_for_function("() => document.querySelector('#person-1 .faces-status').textContent"
                           ".includes('not an image')")
    page.click("#generate")
    assert "fix or remove that person" in page.text_content("#form-error")
    in_view(page, "#form-error")
    upload(page, "#person-1", faces_dir / "obama.jpg")
    assert page.text_content("#form-error") == ""
    # a job the server refuses: the progress says it did not start (not an earlier "done")
    page.fill("#seed", "99999999999999999999")
    page.click("#generate")
    page.wait_for_function(DONE.format(state="not started"))
    assert "seed" in page.text_content("#form-error")


def test_a_scene_image_without_a_face_is_refused_at_upload(open_page, tmp_path):
    page = open_page(LAPTOP)
    sky = tmp_path / "sky.png"
    Image.new("RGB", (96, 64), (90, 140, 200)).save(sky)
    page.set_input_files("#scene-file", str(sky))
    page.wait_for_function("() => document.querySelector('#scene-status').textContent.includes('no face found')")
    assert "error" in page.get_attribute("#scene-status", "class") and page.evaluate("() => state.scene") is None


def test_identities_one_per_photo_renamed_deleted_with_a_thumbnail(open_page, server, faces_dir, tmp_path):
    page = open_page(LAPTOP)
    upload(page, "#person-1", faces_dir / "biden.jpg")
    page.click("#add-person")
    upload(page, "#person-2", faces_dir / "biden.jpg")  # the same photo again: the same identity
    assert page.evaluate("() => state.people[0].identity === state.people[1].identity")
    identity = page.evaluate("() => state.people[0].identity")
    item = page.locator(f"#saved-list li[data-id='{identity}']")
    page.wait_for_function("() => document.querySelectorAll('#saved-list li').length === "
                           f"{len(server.app.state.data.list_identities()[0])}")
    assert item.locator(".saved-name").input_value() == "biden"
    page.wait_for_function(f"() => document.querySelector(\"#saved-list li[data-id='{identity}'] .saved-thumb\")"
                           ".naturalWidth > 0")
    item.locator(".saved-name").fill("Joe")
    item.locator(".saved-rename").click()
    page.wait_for_function("() => document.querySelector('#person-1 legend').textContent === 'Person 1: Joe'")
    assert page.text_content("#person-2 legend") == "Person 2: Joe"
    page.wait_for_function(f"() => document.querySelector(\"#saved-list li[data-id='{identity}'] .saved-name\")"
                           "?.value === 'Joe'")
    page.screenshot(path=str(artifacts_dir(tmp_path) / "identities.png"), full_page=True)
    page.locator(f"#saved-list li[data-id='{identity}'] .saved-delete").click()
    page.wait_for_function(f"() => !document.querySelector(\"#saved-list li[data-id='{identity}']\")")
    assert page.evaluate("() => state.people[0].identity") is None
    assert all(i["name"] != "Joe" for i in server.app.state.data.list_identities()[0])


def test_results_full_view_delete_and_pages(open_page, server, tmp_path):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        ids = [client.post("/v1/generations", json={"prompt": f"job {n}", "steps": 1, "seed": 100 + n}).json()["id"]
               for n in range(7)]
        for job_id in ids:
            while client.get(f"/v1/generations/{job_id}").json()["state"] in ("queued", "running"):
                pass
    page = open_page(LAPTOP)
    page.wait_for_function("() => document.querySelectorAll('#gallery figure').length === 6")
    assert page.is_disabled("#newer") and page.is_enabled("#older")
    assert "seed 106" in page.text_content("#gallery figure figcaption")  # newest first
    page.click("#gallery figure img")
    assert page.evaluate("() => document.querySelector('#viewer').open")
    page.wait_for_function("() => document.querySelector('#viewer-image').naturalWidth === 64")
    in_view(page, "#viewer-image")
    page.screenshot(path=str(artifacts_dir(tmp_path) / "full-view.png"))
    page.click("#viewer-close")
    assert not page.evaluate("() => document.querySelector('#viewer').open")
    page.click("#older")
    page.wait_for_function("() => document.querySelector('#page-label').textContent === 'page 2'")
    assert "seed 100" in page.text_content("#gallery")
    page.click("#newer")
    page.wait_for_function("() => document.querySelector('#gallery figcaption')?.textContent.includes('seed 106')")
    page.click("#gallery figure button:text('Delete')")
    page.wait_for_function("() => !document.querySelector('#gallery').textContent.includes('seed 106')")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get(f"/v1/generations/{ids[-1]}").json()["images"] == []
    assert page.errors == []


def _negative_prompt_used(page, url, tmp_path) -> tuple[object, object]:
    """Generate from the page: the negative prompt the job was sent and the one its image records."""
    from facestudio.imaging import read_png_metadata

    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as sent:
        page.click("#generate")
    job = sent.value.json()
    page.wait_for_function(DONE.format(state="done"))
    with httpx.Client(base_url=url, timeout=60) as client:
        image = client.get(client.get(f"/v1/generations/{job['id']}").json()["images"][0]["url"]).content
    (tmp_path / "negative.png").write_bytes(image)
    return job["request"]["negative_prompt"], read_png_metadata(tmp_path / "negative.png").get("negative_prompt")


def test_the_negative_prompt_box_holds_what_the_job_uses(open_page, server, tmp_path):
    """Without a preset the server has no default negative prompt and the box is empty; with one, the box shows
    the preset's, and emptying it means no negative prompt (not the default again)."""
    from facestudio.presets import PRESETS

    page = open_page(LAPTOP)
    assert page.input_value("#negative") == ""
    page.fill("#negative", "rain")
    assert _negative_prompt_used(page, server.url, tmp_path) == ("rain", "rain")
    pipe = new_pipe()
    pipe.default_side, pipe.preset = 64, PRESETS["plus-face-sd15"]  # as load_preset_pipeline marks it
    with BackgroundServer(create_app(pipe, tmp_path / "preset-data", max_side=64, default_steps=1,
                                     base_model="tiny")) as preset_server:
        page = open_page(LAPTOP, preset_server.url)
        assert page.input_value("#negative") == PRESETS["plus-face-sd15"].negative_prompt
        page.fill("#negative", "")
        assert _negative_prompt_used(page, preset_server.url, tmp_path) == ("", None)
        page.click("#gallery figure button:text('Use these settings again')")
        assert page.input_value("#negative") == ""
    assert page.errors == []
