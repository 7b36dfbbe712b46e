"""`facestudio eval` end to end: a folder of images with metadata, a tiny run spec, bad input, the report in
a real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import launch_chromium
from facestudio import load_image
from facestudio.cli import main
from facestudio.evaluation.scoring import THRESHOLDS
from facestudio.imaging import ai_generated_metadata, save_png

from test_eval_metric import side_by_side



def person(name, photo, region=None):
    return {"name": name, "photos": [photo], "region": region, "strength": 1.0}


def write_generated(path: Path, image: Image.Image, people: list[dict], seed: int = 0, **extra) -> None:
    save_png(image, path, ai_generated_metadata({"prompt": "a portrait photo", "seed": seed, "identities": people,
                                                 "text_guidance_scale": 7.5, "reference_guidance_scale": 3.0, **extra}))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIP model saved like a real one (config, weights, tokenizer, image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from facestudio.models import tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def generated_folder(faces_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Real photos dressed as generated images, plus the bad cases: no metadata, an identity with no face."""
    out = tmp_path_factory.mktemp("generated")
    photos = tmp_path_factory.mktemp("photos")
    Image.new("RGB", (160, 160), (128, 128, 128)).save(photos / "ghost.png")  # a reference with no face
    obama = load_image(faces_dir / "obama.jpg")
    biden = load_image(faces_dir / "biden.jpg")
    write_generated(out / "000-seed0.png", load_image(faces_dir / "obama2.jpg"), [person("obama", "obama.jpg")], 0)
    write_generated(out / "001-seed1.png", load_image(faces_dir / "obama3.jpg"), [person("obama", "obama.jpg")], 1)
    write_generated(out / "002-seed0.png", biden, [person("obama", "obama.jpg")], 0, prompt="a wrong person")
    # Two people, asked for right-to-left: matching must follow the faces.
    write_generated(out / "003-seed0.png", side_by_side(obama, biden),
                    [person("biden", "biden.jpg"), person("obama", "obama.jpg")], 0)
    write_generated(out / "004-seed0.png", obama, [person("ghost", "ghost.png")], 0)
    obama.save(out / "plain.png")  # no metadata
    return out, photos


def test_folder_evaluation_scores_real_faces_and_lists_what_it_skipped(generated_folder, faces_dir, capsys):
    folder, photos = generated_folder
    report = folder / "report"
    code = main(["eval", str(folder), "--photos", str(faces_dir), "--photos", str(photos),
                 "--held-out", f"obama={faces_dir / 'obama_partial_face.jpg'}", "--clip", str(folder / "no-clip"),
                 "--output", str(report)])
    err = capsys.readouterr().err
    assert code == 0
    assert "plain.png: no facestudio metadata" in err
    assert "identity ghost" in err and "no face found" in err
    assert "CLIP model" in err and "no such folder" in err
    results = json.loads((report / "results.json").read_text())
    images = {Path(i["image"]).name: i for i in results["images"]}
    assert "004-seed0.png" not in images and len(images) == 4  # ghost's image skipped, the rest scored
    for name in ("000-seed0.png", "001-seed1.png"):
        me = images[name]["people"][0]
        assert all(me["similarity"][r] >= THRESHOLDS[r] for r in THRESHOLDS)
        assert me["held_out"]["sface"] >= THRESHOLDS["sface"]
    wrong = images["002-seed0.png"]["people"][0]
    assert all(wrong["similarity"][r] < THRESHOLDS[r] for r in THRESHOLDS)
    two = {p["identity"]: p for p in images["003-seed0.png"]["people"]}
    assert two["biden"]["box"][0] > two["obama"]["box"][2] and not two["biden"]["confused"]
    assert two["biden"]["in_region"] is False  # default strips: slot 0 is the left half, Biden is on the right
    obama = next(r for r in results["tables"]["identities"] if r["identity"] == "obama")
    # Three photos of one man across "seeds": different pictures, same person (below 1 - threshold).
    assert 0.05 < obama["diversity"] < 1 - THRESHOLDS["sface"]
    methods = results["tables"]["methods"][0]
    assert methods["detection_rate"] == 1.0 and methods["sface_above_threshold"] == pytest.approx(4 / 5)
    assert methods["confusion_rate"] == 0.0
    skipped = " ".join(w + " " + why for w, why in results["skipped"])
    for reason in ("no facestudio metadata", "no face found", "CLIP model", "trade-off"):
        assert reason in skipped
    md = (report / "report.md").read_text()
    assert "## Skipped" in md and "plain.png" in md and "identity ghost" in md
    assert (report / "sheets" / "obama.png").is_file() and (report / "report.html").is_file()


def test_nothing_to_evaluate_exits_2_with_the_reasons(tmp_path, faces_dir, capsys):
    load_image(faces_dir / "obama.jpg").save(tmp_path / "x.png")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing could be evaluated" in err and "x.png: no facestudio metadata" in err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_bad_spec_is_one_clear_line(tmp_path, capsys):
    spec = tmp_path / "run.toml"
    spec.write_text('base_model = "tiny"\nprompts = ["a"]\nsurprise = 1\n')
    assert main(["eval", "--spec", str(spec)]) == 2
    assert "unknown key(s) surprise" in capsys.readouterr().err


def test_a_spec_with_a_preset_checks_it_and_needs_no_base_model(faces_dir):
    from facestudio.errors import FaceStudioError
    from facestudio.evaluation.runspec import parse_spec

    people = {"identities": {"obama": {"photos": [str(faces_dir / "obama.jpg")]}}, "prompts": ["a"]}
    spec = parse_spec({**people, "preset": "plus-face-sd15"})
    assert spec.preset == "plus-face-sd15" and spec.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    with pytest.raises(FaceStudioError, match="unknown preset 'nope'"):
        parse_spec({**people, "preset": "nope"})
    with pytest.raises(FaceStudioError, match="brings its own adapter"):
        parse_spec({**people, "preset": "plus-face-sd15", "adapter": "tiny"})


@pytest.fixture(scope="module")
def spec_report(faces_dir, tiny_clip, tmp_path_factory) -> Path:
    """A tiny run spec: one person with a held-out photo, one person whose photo has no face, two guidance
    settings, two seeds, baselines and tuning timings, CLIP scoring."""
    root = tmp_path_factory.mktemp("spec")
    Image.new("RGB", (160, 160), (90, 90, 90)).save(root / "noface.png")
    spec = root / "run.toml"
    spec.write_text(f"""
base_model = "tiny"
adapter = "tiny"
steps = 1
width = 64
height = 64
seeds = [0, 1]
prompts = ["a portrait photo"]
tuning_baselines = true
tuning_passes = 1
clip_model = "{tiny_clip}"
[[settings]]
text_scale = 5.0
reference_scale = 1.0
[[settings]]
text_scale = 5.0
reference_scale = 6.0
[identities.obama]
photos = ["{faces_dir / 'obama.jpg'}"]
held_out = ["{faces_dir / 'obama2.jpg'}"]
[identities.nobody]
photos = ["noface.png"]
""")
    out = root / "out"
    assert main(["eval", "--spec", str(spec), "--output", str(out)]) == 0
    return out


def test_run_spec_generates_scores_and_reports(spec_report):
    results = json.loads((spec_report / "results.json").read_text())
    methods = {r["method"]: r for r in results["tables"]["methods"]}
    assert set(methods) == {"facestudio", "no identity", "paste"} and methods["facestudio"]["images"] == 4
    # The paste baseline puts the real reference face in: detected and recognised (the upper reference).
    assert methods["paste"]["detection_rate"] == 1.0
    assert methods["paste"]["sface_similarity"] >= THRESHOLDS["sface"]
    assert methods["paste"]["sface_copy_gap"] > 0  # copying scores higher on the reference than held-out
    assert results["clip_model"] and all(0 <= i["clip_score"] <= 100 for i in results["images"])
    timing = {r["method"]: r for r in results["tables"]["timing"]}
    assert timing["facestudio"]["face_analysis"] > 0 and timing["facestudio"]["denoising"] > 0
    assert results["run"]["time_to_first_image_seconds"] > 0
    tuning = {t["method"]: t for t in results["tuning"]}
    assert tuning["DreamBooth-LoRA"]["steps"] == 500 and tuning["Textual Inversion"]["passes_per_step"] == 4
    rows = {r["method"]: r for r in results["tables"]["personalisation"]}
    assert rows["Textual Inversion"]["ratio"] > 1 and rows["DreamBooth-LoRA"]["ratio"] > 1
    assert any("identity nobody" in w and "no face" in why for w, why in results["skipped"])
    for chart in ("similarity-vs-reference-scale", "text-reference-tradeoff", "time-split"):
        assert (spec_report / "charts" / f"{chart}.png").stat().st_size > 1000
    meta = json.loads(Image.open(next((spec_report / "images" / "facestudio").glob("*.png"))).info["facestudio"])
    assert meta["ai_generated"] is True and meta["eval_method"] == "facestudio"


def test_report_opens_in_headless_chromium_without_errors(spec_report, tmp_path):
    from playwright.sync_api import sync_playwright

    errors, failed = [], []
    with sync_playwright() as p:
        browser = launch_chromium(p, tmp_path / "profile")
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto((spec_report / "report.html").as_uri())
        page.wait_for_load_state("load")
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
        external = page.eval_on_selector_all("[src],[href]", "els => els.map(e => e.src || e.href)"
                                             ".filter(u => !u.startsWith('file:'))")
        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        browser.close()
    assert not errors and not failed and not external
    assert len(sizes) >= 4 and all(width > 0 for _, width in sizes), sizes
    assert {"Summary by method", "Time to personalise", "Charts", "Skipped"} <= set(headings)
