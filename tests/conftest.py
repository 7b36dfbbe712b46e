"""Shared fixtures: the real test photos beside the project, and one face analyzer per test session."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facestudio import FaceAnalyzer, load_image

FACES_DIR = Path(os.environ.get("FACESTUDIO_TEST_FACES",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"))
PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg", "32bit.png"]
OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "32bit.png"]


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    missing = [p for p in PHOTOS if not (FACES_DIR / p).is_file()]
    if missing:
        pytest.fail(f"test photos missing from {FACES_DIR}: {missing}; set FACESTUDIO_TEST_FACES")
    return FACES_DIR


@pytest.fixture(scope="session")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="session")
def photos(faces_dir) -> dict[str, np.ndarray]:
    """Every bundled photo as an RGB array."""
    return {name: np.asarray(load_image(faces_dir / name)) for name in PHOTOS}


@pytest.fixture(scope="session")
def arcface_analyzer(tmp_path_factory) -> FaceAnalyzer:
    """A face analyzer with a tiny ArcFace network exported to ONNX (test_arcface.py), as the FaceID kinds read."""
    from test_arcface import _export, _tiny_arcface

    from facestudio.faces.arcface import ArcFaceRecognizer

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = _export(_tiny_arcface(0), tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx")
    return FaceAnalyzer(recognizer=ArcFaceRecognizer(path))


def unet_output(pipe, image_embeds):
    """`pipe.unet` once on fixed random latents and text (64 wide: the tiny UNet) with these `image_embeds`."""
    import torch

    generator = torch.Generator().manual_seed(3)
    sample, text = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 7, 64, generator=generator)
    with torch.no_grad():
        return pipe.unet(sample, 10, text, added_cond_kwargs={"image_embeds": image_embeds}).sample


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models: they gain nothing from threads, and on a shared machine busy threads wait
    on each other (5-15x slower training here). Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Debian's Chromium (CI installs it); FACESTUDIO_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("FACESTUDIO_CHROMIUM", "/usr/bin/chromium")
#: The machine may have no network: these flags stop Chromium from trying to reach one.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def launch_chromium(playwright, profile: Path, **options):
    """Headless Chromium with a fresh profile folder, as a Playwright persistent context."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt install chromium, or set FACESTUDIO_CHROMIUM)")
    return playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                         args=CHROMIUM_FLAGS, **options)


def new_page(context, timeout_ms: int = 30_000):
    """A page of the Playwright `context` that keeps its JavaScript errors in `page.errors`."""
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


def run_in_threads(work, keys, repeats: int) -> dict:
    """Run `work(key)` `repeats` times in one thread per key, all at once; every result per key, in order.

    An exception in any thread fails the calling test.
    """
    import threading

    results, errors = {k: [] for k in keys}, []

    def loop(key):
        try:
            for _ in range(repeats):
                results[key].append(work(key))
        except Exception as e:  # re-raised below, in the test's own thread
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,)) for k in keys]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="session", autouse=True)
def c2pa_signing_folder(tmp_path_factory):
    """The local C2PA signing pair of this test session (made on first use), never the user's own."""
    folder = tmp_path_factory.mktemp("c2pa") / "signer"
    os.environ["FACESTUDIO_C2PA_DIR"] = str(folder)
    yield folder
    os.environ.pop("FACESTUDIO_C2PA_DIR", None)


TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def assert_labelled(path: Path) -> dict:
    """Check the labels of a generated image with standard readers; returns the active C2PA manifest.

    exiftool (Debian libimage-exiftool-perl) prints the XMP digital source type; c2pa-python's Reader validates
    the manifest: the claim signature and the data hash are valid, and the one failure is that the signer, a
    local self-signed chain, is on no trust list (state "Valid", not "Trusted" nor "Invalid")."""
    import json as _json

    import c2pa

    exiftool = shutil.which("exiftool")
    if exiftool is None:
        pytest.fail("exiftool not found (apt install libimage-exiftool-perl)")
    shown = subprocess.run([exiftool, "-DigitalSourceType", "-CreatorTool", str(path)], capture_output=True,
                           text=True, check=True).stdout
    assert f"Digital Source Type             : {TRAINED}" in shown, shown
    assert "Creator Tool                    : facestudio " in shown, shown
    with c2pa.Reader(str(path)) as reader:
        state, results = reader.get_validation_state(), reader.get_validation_results()["activeManifest"]
        active = reader.get_active_manifest()
    codes = {kind: [r["code"] for r in results.get(kind, [])] for kind in ("success", "failure")}
    assert state == "Valid", (state, results)
    assert {"claimSignature.validated", "claimSignature.insideValidity", "assertion.dataHash.match"} <= \
        set(codes["success"]), results
    assert codes["failure"] == ["signingCredential.untrusted"], results
    actions = next(a["data"]["actions"] for a in active["assertions"] if a["label"].startswith("c2pa.actions"))
    assert [(a["action"], a["digitalSourceType"]) for a in actions] == [("c2pa.created", TRAINED)], _json.dumps(actions)
    return active


def tiny_facestudio_pipeline(style: bool = False):
    """A tiny SD pipeline (`models.tiny_components`) with facestudio's identity adapter (seed 1), and with
    `style` its style adapter and tiny style encoder beside it (seed 2)."""
    from facestudio.guidance import identity as idg
    from facestudio.guidance import style as sty
    from facestudio.models import tiny_components
    from facestudio.pipeline import FaceStudioPipeline

    pipe = FaceStudioPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    cross = pipe.unet.config.cross_attention_dim
    config = idg.IdentityAdapterConfig(cross_attention_dim=cross)
    kwargs = dict(identity=idg.new_identity_adapter(pipe.unet, config, seed=1), identity_config=config)
    if style:
        encoder = sty.tiny_style_encoder()
        style_config = sty.StyleAdapterConfig(image_embed_dim=encoder.embed_dim, cross_attention_dim=cross)
        kwargs.update(style=sty.new_style_adapter(pipe.unet, style_config, seed=2), style_config=style_config,
                      style_encoder=encoder)
    pipe.load_adapters(**kwargs)
    return pipe


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(name, options)`: a fresh tmpfs mounted at tmp_path/name with mount's `-o` options (root only, as
    the tests run here and in CI); the test is skipped where mounting is not permitted."""
    mounted = []

    def mount(name, options):
        if shutil.which("mount") is None:
            pytest.skip("no mount command: the full and read-only disk cases need it")
        target = tmp_path / name
        target.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "facestudio-test", str(target)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}); the full and read-only "
                        "disk cases need root with mount rights")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=True)  # lazy: a server may still hold a file


def fill_disk(folder: Path, leave: int = 0, name: str = "filler") -> None:
    """Fill the file system of `folder` with the file `name` until at most `leave` bytes are free."""
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT)
    try:
        while (free := shutil.disk_usage(folder).free) > leave:
            os.write(fd, b"\0" * min(65536, free - leave))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty model hub cache, offline, and none of the user's model files (the ArcFace model unset, the
    PuLID presets' antelopev2 and BiSeNet named at paths that do not exist)."""
    for name in ("FACESTUDIO_ANTELOPEV2_MODEL", "FACESTUDIO_BISENET_MODEL"):
        monkeypatch.setenv(name, str(tmp_path / "none" / name))
    monkeypatch.delenv("FACESTUDIO_ARCFACE_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def cache_file(hub: Path, repo: str, path: str, write) -> Path:
    """Put a file (or, with path "", a folder) into huggingface_hub's cache layout (refs/main -> snapshots/...):
    `write(target)` writes it."""
    root = hub / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    target = root / "snapshots" / commit / path
    target.parent.mkdir(parents=True, exist_ok=True)
    write(target)
    return target
