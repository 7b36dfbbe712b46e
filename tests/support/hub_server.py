"""A model hub of our own on loopback, for tests: the real `huggingface_hub` client (and diffusers and
transformers through it) downloads from it when `HF_ENDPOINT` points at `HubServer.url`.

It answers the routes the client uses (checked on huggingface_hub 2.4's `hf_api.py` / `file_download.py`):

* `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: the model info (`sha`, `siblings`; with
  `?blobs=true` each sibling's `size`, `blobId` and, for LFS files, `lfs: {sha256, size, pointerSize}`), the
  card's licence in `cardData` and the `license:` tag.
* `GET /api/models/{repo}/tree/{rev}[/{path}]`: the tree listing (`type`, `oid`, `size`, `path`, `lfs`).
* `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: a regular file answers 200 with `ETag` (its git blob sha1),
  `X-Repo-Commit` and `Content-Length`; an LFS file answers 302 to a second port (a "CDN": another origin, so
  the client does not follow the redirect on HEAD and reads the metadata from the 302 itself) with
  `X-Linked-Etag` (the sha256), `X-Linked-Size` and `X-Repo-Commit`, as huggingface.co does. Unknown repos,
  revisions and files answer 404 with the `X-Error-Code` the client maps to its errors.
* The CDN serves `GET /lfs/{sha256}` with `Range` (206 + `Content-Range`), so an interrupted download resumes.
* `GET` of any other path added with `add_static` (the insightface release zips, served under their GitHub
  path), with `Range` too.

Faults for tests: `corrupt` (serve other bytes of the same length than the listed hash says), `drop_after`
(the first GET of a file stops after N bytes, closing the connection). Every request is logged in
`requests` as `(method, path, range header)`.

`facestudio_hub()` fills one with tiny checkpoints built from facestudio's tiny models, saved in the real
layouts under the real repository ids and file names of the SD 1.5 presets (plus decoys a preset must not
fetch: the single-file checkpoints, `.bin` and fp16 copies, the safety checker), and the insightface
`buffalo_l.zip` (a tiny ArcFace ONNX network with buffalo_l's inputs and outputs as `w600k_r50.onnx`) and
facexlib's `parsing_bisenet.pth` (random weights).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

#: Extensions stored in git LFS on the hub (huggingface.co's default .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".zip", ".msgpack", ".h5", ".model")

#: The path insightface publishes its model packs under (github.com/deepinsight/insightface/releases).
INSIGHTFACE_RELEASE_PATH = "/deepinsight/insightface/releases/download/v0.7"
#: The path facexlib publishes BiSeNet under (github.com/xinntao/facexlib/releases).
FACEXLIB_RELEASE_PATH = "/xinntao/facexlib/releases/download/v0.2.0"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    """One model repository: files by path, the licence its card declares."""

    repo_id: str
    files: dict[str, bytes]
    license: str | None = None

    @property
    def sha(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            digest.update(path.encode() + hashlib.sha256(self.files[path]).digest())
        return digest.hexdigest()

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def entry(self, path: str) -> dict:
        """A file's tree entry, as `/api/models/{repo}/tree` lists it."""
        data = self.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if self.is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
            entry.update(oid=git_blob_sha1(pointer), lfs={"oid": sha256, "size": len(data), "pointerSize": len(pointer)})
        return entry


@dataclass
class HubServer:
    """The hub (`url`) and its CDN on loopback; use as a context manager or call `start()` / `stop()`."""

    repos: dict[str, HubRepo] = field(default_factory=dict)
    static: dict[str, bytes] = field(default_factory=dict)
    corrupt: set[tuple[str, str]] = field(default_factory=set)
    drop_after: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def add_static(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; returns its address."""
        self.static[path] = data
        return self.url + path

    def start(self) -> HubServer:
        self._lock = threading.Lock()
        self._dropped: set[tuple[str, str]] = set()
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self)) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def downloads(self) -> list[str]:
        """The paths whose bodies were sent (GETs of files: CDN blobs, regular files, static files)."""
        return [path for method, path, _ in self.requests
                if method == "GET" and not path.startswith("/api/")]

    def env(self) -> dict[str, str]:
        """Environment variables that point huggingface_hub and facestudio's insightface download here."""
        return {"HF_ENDPOINT": self.url, "FACESTUDIO_INSIGHTFACE_URL": self.url + INSIGHTFACE_RELEASE_PATH,
                "FACESTUDIO_FACEXLIB_URL": self.url + FACEXLIB_RELEASE_PATH,
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    # -- what a request gets --------------------------------------------------------------------------------

    def body(self, repo: HubRepo, path: str) -> bytes:
        data = repo.files[path]
        if (repo.repo_id, path) in self.corrupt:  # same length, other bytes: only a hash check sees it
            data = bytes(b ^ 0x5A for b in data[:1]) + data[1:]
        return data

    def should_drop(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            if key in self.drop_after and key not in self._dropped:
                self._dropped.add(key)
                return self.drop_after[key]
        return None


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_LFS = re.compile(r"^/lfs/(?P<sha>[0-9a-f]{64})$")


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test reads `hub.requests`
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        # -- routing ----------------------------------------------------------------------------------------

        def _answer(self, head: bool) -> None:
            url = urlparse(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            with hub._lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
            if m := _LFS.match(path):
                return self._lfs(m["sha"], head)
            if path in hub.static:
                return self._bytes(hub.static[path], head, key=("", path))
            if m := _RESOLVE.match(path):
                return self._resolve(m["repo"], m["rev"], m["path"], head)
            if m := _TREE.match(path):
                return self._tree(m["repo"], m["rev"], (m["path"] or "").strip("/"), query)
            if m := _INFO.match(path):
                return self._info(m["repo"], m["rev"], query)
            self._error(404, "EntryNotFound" if path.startswith("/api/") else None, f"no route {path}")

        def _repo(self, repo_id: str, revision: str | None) -> HubRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
                return None
            if revision not in (None, "main", repo.sha):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", commit=None)
                return None
            return repo

        def _info(self, repo_id: str, revision: str | None, query: dict) -> None:
            if (repo := self._repo(repo_id, revision)) is None:
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for path in sorted(repo.files):
                sibling = {"rfilename": path}
                if blobs:
                    entry = repo.entry(path)
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if "lfs" in entry:
                        sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["size"],
                                          "pointerSize": entry["lfs"]["pointerSize"]}
                siblings.append(sibling)
            tags = [f"license:{repo.license}"] if repo.license else []
            self._json({"_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha,
                        "private": False, "gated": False, "disabled": False, "tags": tags,
                        "cardData": {"license": repo.license} if repo.license else {}, "siblings": siblings})

        def _tree(self, repo_id: str, revision: str, under: str, query: dict) -> None:
            if (repo := self._repo(repo_id, revision)) is None:
                return
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            prefix = under + "/" if under else ""
            entries, folders = [], set()
            for path in sorted(repo.files):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):]
                parts = rest.split("/")
                for depth in range(1, len(parts)):
                    folder = prefix + "/".join(parts[:depth])
                    if (recursive or depth == 1) and folder not in folders:
                        folders.add(folder)
                        entries.append({"type": "directory", "path": folder, "size": 0,
                                        "oid": hashlib.sha1(folder.encode()).hexdigest()})
                if recursive or len(parts) == 1:
                    entries.append(repo.entry(path))
            self._json(entries)

        def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
            if (repo := self._repo(repo_id, revision)) is None:
                return
            if path not in repo.files:
                return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=repo.sha)
            entry = repo.entry(path)
            if "lfs" in entry:
                sha256 = entry["lfs"]["oid"]
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn_url}/lfs/{sha256}")
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(entry["size"]))
                self.send_header("X-Repo-Commit", repo.sha)
                self.send_header("ETag", f'"{entry["oid"]}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._bytes(hub.body(repo, path), head, key=(repo_id, path),
                        headers={"ETag": f'"{entry["oid"]}"', "X-Repo-Commit": repo.sha})

        def _lfs(self, sha256: str, head: bool) -> None:
            for repo in hub.repos.values():
                for path in repo.files:
                    if repo.is_lfs(path) and hashlib.sha256(repo.files[path]).hexdigest() == sha256:
                        return self._bytes(hub.body(repo, path), head, key=(repo.repo_id, path),
                                           headers={"ETag": f'"{sha256}"'})
            self._error(404, None, "no such object")

        # -- bodies -----------------------------------------------------------------------------------------

        def _bytes(self, data: bytes, head: bool, key: tuple[str, str], headers: dict | None = None) -> None:
            start, end = 0, len(data) - 1
            ranged = self.headers.get("Range")
            if ranged and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", ranged.strip())):
                start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            part = data[start:end + 1]
            self.send_response(206 if ranged else 200)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(part)))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if head:
                return
            cut = hub.should_drop(key)
            if cut is not None and cut < len(part):
                self.wfile.write(part[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the client sees the body end early
                return
            self.wfile.write(part)

        def _json(self, value) -> None:
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


# ---------------------------------------------------------------------------------------------------------
# The SD 1.5 presets' repositories, with tiny checkpoints in the real layouts
# ---------------------------------------------------------------------------------------------------------

#: stable-diffusion-v1-5/stable-diffusion-v1-5's model_index.json (its real component list; the scheduler is the
#: tiny model's Euler ancestral, where the real repository names PNDM).
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _decoy(name: str, size: int = 4096) -> bytes:
    """Bytes that must never be downloaded (a test fails if they are)."""
    return hashlib.sha256(name.encode()).digest() * (size // 32)


def sd15_base_repo(work: Path) -> HubRepo:
    """The tiny SD pipeline as stable-diffusion-v1-5/stable-diffusion-v1-5 lays it out, with its decoys."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from facestudio.models import tiny_components

    folder = work / "sd15"
    components = {k: v for k, v in tiny_components().items() if k != "image_encoder"}
    StableDiffusionPipeline(**components).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224).save_pretrained(folder / "feature_extractor")
    files = {path: data for path, data in _folder_files(folder).items() if path != "model_index.json"}
    files["model_index.json"] = json.dumps(SD15_MODEL_INDEX, indent=2).encode()
    files["safety_checker/config.json"] = b'{"_name_or_path": "CompVis/stable-diffusion-safety-checker"}'
    for decoy in ("safety_checker/model.safetensors", "safety_checker/pytorch_model.bin",
                  "text_encoder/pytorch_model.bin", "text_encoder/model.fp16.safetensors",
                  "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
                  "unet/diffusion_pytorch_model.non_ema.safetensors", "vae/diffusion_pytorch_model.bin",
                  "vae/diffusion_pytorch_model.fp16.safetensors", "v1-5-pruned.safetensors",
                  "v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.ckpt"):
        files[decoy] = _decoy(decoy)
    files["v1-inference.yaml"] = b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    files["README.md"] = b"---\nlicense: creativeml-openrail-m\n---\n# tiny stand-in\n"
    return HubRepo("stable-diffusion-v1-5/stable-diffusion-v1-5", files, "creativeml-openrail-m")


def ip_adapter_repos(work: Path) -> tuple[HubRepo, HubRepo]:
    """h94/IP-Adapter (the ViT-H image encoder folder, the plain SD 1.5 adapter) and h94/IP-Adapter-FaceID
    (the FaceID adapters as .bin pickles), tiny and random in the public layouts of the tiny UNet."""
    import torch
    from safetensors.torch import save as save_safetensors

    from facestudio.guidance import public_layouts as layouts
    from facestudio.guidance import style as sty
    from facestudio.models import tiny_components

    unet = tiny_components()["unet"]
    clip = sty.tiny_style_encoder()
    clip.model.save_pretrained(work / "image_encoder")
    generator = torch.Generator().manual_seed(0)

    def random(layout) -> dict:
        return {k: 0.2 * torch.randn(shape, generator=generator) for k, shape in layout.items()}

    def as_bin(state: dict) -> bytes:  # IP-Adapter's .bin: {"image_proj": {...}, "ip_adapter": {...}}
        buffer = io.BytesIO()
        torch.save({part: {k.removeprefix(part + "."): v for k, v in state.items() if k.startswith(part + ".")}
                    for part in ("image_proj", "ip_adapter")}, buffer)
        return buffer.getvalue()

    clip_dim = clip.model.config.hidden_size
    adapter = _folder_files(work / "image_encoder", "models/image_encoder/")
    adapter["models/image_encoder/pytorch_model.bin"] = _decoy("image_encoder.bin")
    adapter["models/ip-adapter_sd15.safetensors"] = save_safetensors(random(layouts.base(unet, clip_dim=clip.embed_dim)))
    adapter["models/ip-adapter-plus-face_sd15.safetensors"] = save_safetensors(
        random(layouts.plus_face(unet, clip_dim=clip_dim)))
    adapter["sdxl_models/ip-adapter_sdxl.safetensors"] = _decoy("ip-adapter_sdxl")
    faceid = {
        "ip-adapter-faceid-plusv2_sd15.bin": as_bin(random(layouts.faceid_plus(unet, clip_dim=clip_dim))),
        "ip-adapter-faceid_sd15.bin": as_bin(random(layouts.faceid(unet))),
        "ip-adapter-faceid_sd15_lora.safetensors": _decoy("faceid lora"),
        "ip-adapter-faceid-plusv2_sdxl.bin": _decoy("plusv2 sdxl"),
    }
    return HubRepo("h94/IP-Adapter", adapter, "apache-2.0"), HubRepo("h94/IP-Adapter-FaceID", faceid, None)


def taesd_repo(work: Path) -> HubRepo:
    """madebyollin/taesd as published (a diffusers AutoencoderTiny folder at the root beside the original
    .pth files), with the tiny TAESD-shaped decoder of the tests; only config and safetensors are fetched."""
    from facestudio.models import tiny_autoencoder

    tiny_autoencoder().save_pretrained(work / "taesd")
    files = _folder_files(work / "taesd")
    for decoy in ("diffusion_pytorch_model.bin", "taesd_decoder.pth", "taesd_encoder.pth"):
        files[decoy] = _decoy(decoy)
    files["README.md"] = b"---\nlicense: mit\n---\n# tiny stand-in\n"
    return HubRepo("madebyollin/taesd", files, "mit")


def buffalo_l_zip(work: Path) -> bytes:
    """insightface's buffalo_l.zip with its five files at the top (as published); w600k_r50.onnx is a tiny
    network with ArcFace's input and output names, the others small stand-ins facestudio does not read."""
    import sys

    tests = str(Path(__file__).resolve().parents[1])
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from test_arcface import _export, _tiny_arcface

    import onnx as onnx_lib

    # one self-contained file, as insightface ships it (the exporter writes the weights beside it)
    onnx = onnx_lib.load(str(_export(_tiny_arcface(0), work / "w600k_r50.onnx"))).SerializeToString()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx"):
            archive.writestr(name, _decoy(name, 1024))
        archive.writestr("w600k_r50.onnx", onnx)
    return buffer.getvalue()


def facestudio_hub(work: Path) -> HubServer:
    """A (not yet started) hub with the SD 1.5 presets' repositories, TAESD and the insightface buffalo_l zip;
    `work` is a scratch folder for building them. Start it, then `register_insightface(hub)`."""
    work.mkdir(parents=True, exist_ok=True)
    hub = HubServer()
    hub.add(sd15_base_repo(work))
    for repo in ip_adapter_repos(work):
        hub.add(repo)
    hub.add(taesd_repo(work))
    hub.static[f"{INSIGHTFACE_RELEASE_PATH}/buffalo_l.zip"] = buffalo_l_zip(work)
    hub.static[f"{FACEXLIB_RELEASE_PATH}/parsing_bisenet.pth"] = bisenet_file()
    return hub


def bisenet_file() -> bytes:
    """facexlib's parsing_bisenet.pth in its layout (the network's state dict), random weights."""
    import io

    import torch

    from facestudio.guidance.pulid.parsing import BiSeNet

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(BiSeNet().state_dict(), buffer)
    return buffer.getvalue()


def insightface_sha256_env(hub: HubServer) -> dict[str, str]:
    """`FACESTUDIO_INSIGHTFACE_SHA256` naming the served packs' hashes (they are not the published zips)."""
    packs = {Path(p).stem: hashlib.sha256(d).hexdigest() for p, d in hub.static.items()
             if p.startswith(INSIGHTFACE_RELEASE_PATH)}
    return {"FACESTUDIO_INSIGHTFACE_SHA256": ",".join(f"{name}={sha}" for name, sha in sorted(packs.items()))}
