"""What a preset needs from the model hub and insightface, and fetching it: `facestudio download`.

One generic function, `needs_of(preset)`, reads a preset's fields, so that a preset added later is covered
without code here:

* `base_model` (a hub id): a diffusers pipeline; only the files `from_pretrained` loads are fetched (its
  `model_index.json`, each component's config and its one non-variant weights file, safetensors first; the
  whole folder of components without weights such as the tokenizer), never the whole repository;
* every field holding a `HubFile` (or a tuple of them): that one file (`adapter`, `style_adapter`, ...);
* every field named `*encoder` holding a hub path such as `"h94/IP-Adapter/models/image_encoder"`: a
  transformers model folder (its `*.json` and its one weights file);
* `speed` (when the preset names a speed model): the `HubFile` fields of that catalogue entry;
* `face_pack`: an insightface model pack (`buffalo_l`, `antelopev2`), fetched from insightface's published
  address only once its non-commercial licence is accepted;
* every `local_files` entry whose key names a release file of `PACKS` (antelopev2, facexlib's `bisenet`).

Fields whose name starts with `style_` are only needed with a style image, and only when the preset has a
style adapter. Hub files go through
huggingface_hub (its cache, its per-file progress bar, `HF_ENDPOINT`, `HF_HUB_OFFLINE`); every file is checked
against the hub's hash (sha256 for LFS files, the git blob sha1 otherwise) after download and when found in
the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FaceStudioError, ModelFileError

logger = logging.getLogger(__name__)

#: What `--accept-license` takes for insightface's models.
INSIGHTFACE_LICENSE = "insightface-noncommercial"
INSIGHTFACE_LICENSE_TEXT = ("insightface's pretrained models (buffalo_l, antelopev2) are for non-commercial research "
                            "use only (github.com/deepinsight/insightface#license)")
#: Where insightface publishes its model packs; `FACESTUDIO_INSIGHTFACE_URL` replaces it (a mirror, a test).
INSIGHTFACE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7"
INSIGHTFACE_URL_ENV = "FACESTUDIO_INSIGHTFACE_URL"
#: `name=sha256,...`: the zips' hashes, for a mirror whose zips are not the published ones (tests).
INSIGHTFACE_SHA256_ENV = "FACESTUDIO_INSIGHTFACE_SHA256"
#: Where facexlib publishes BiSeNet (the face parser PuLID reads); `FACESTUDIO_FACEXLIB_URL` replaces it.
FACEXLIB_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.0"
FACEXLIB_URL_ENV = "FACESTUDIO_FACEXLIB_URL"

#: Licences of the repositories the presets use, where the model card's tag says less than the terms.
KNOWN_LICENCES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "CreativeML OpenRAIL-M (use restrictions in the licence)",
    "stabilityai/stable-diffusion-xl-base-1.0": "CreativeML OpenRAIL++-M (use restrictions in the licence)",
    "h94/IP-Adapter": "Apache-2.0 (the adapters); the ViT-H / bigG image encoders: MIT (LAION OpenCLIP)",
    "h94/IP-Adapter-FaceID": "non-commercial research use only (trained on insightface's ArcFace embeddings)",
}


@dataclass(frozen=True)
class Pack:
    """A model from a release address rather than the model hub: an insightface pack (a zip of ONNX files,
    unpacked into `~/.insightface/models/<name>/`, fetched only once its licence is accepted) or one file
    (facexlib's BiSeNet, put where its `presets.LocalFile` looks by default)."""

    name: str
    size: int  # as published (shown before downloading)
    sha256: str  # of the zip or file; "" where the publisher states none (then checked for completeness)
    main_file: str  # the file facestudio reads
    archive: bool = True
    folder_template: str = "~/.insightface/models/{name}"
    base_url: str = INSIGHTFACE_URL
    url_env: str = INSIGHTFACE_URL_ENV
    licence: str = INSIGHTFACE_LICENSE  # what --accept-license must name first; "" for none
    licence_text: str = "non-commercial research only"
    publisher: str = "insightface"

    @property
    def folder(self) -> Path:
        return Path(self.folder_template.format(name=self.name)).expanduser()

    @property
    def url(self) -> str:
        return f"{os.environ.get(self.url_env, self.base_url).rstrip('/')}/" \
               f"{self.name + '.zip' if self.archive else self.main_file}"

    @property
    def expected_sha256(self) -> str:
        given = dict(item.split("=", 1) for item in os.environ.get(INSIGHTFACE_SHA256_ENV, "").split(",") if "=" in item)
        return given.get(self.name, self.sha256).strip().lower()

    def present(self) -> bool:
        return (self.folder / self.main_file).is_file()


#: The release files, with the size and sha256 of the published zips (github.com/deepinsight/insightface,
#: release v0.7) and facexlib's BiSeNet (release v0.2.0, which states no hash).
PACKS = {p.name: p for p in (
    Pack("buffalo_l", 288_621_354, "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f", "w600k_r50.onnx"),
    Pack("antelopev2", 360_662_982, "8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5", "glintr100.onnx"),
    Pack("bisenet", 53_289_463, "", "parsing_bisenet.pth", archive=False, folder_template="~/.cache/facestudio",
         base_url=FACEXLIB_URL, url_env=FACEXLIB_URL_ENV, licence="", licence_text="MIT", publisher="facexlib"),
)}


@dataclass(frozen=True)
class Need:
    """Something a preset needs from one hub repository, before the hub is asked what it holds."""

    repo: str
    kind: str  # "file", "pipeline" (a diffusers pipeline repo) or "folder" (a transformers model folder)
    path: str  # the file, or the folder inside the repo ("" for its root)
    what: str  # in words: "base model", "adapter", "image encoder", ...


@dataclass(frozen=True)
class HubEntry:
    """One file to have, with what the hub says about it."""

    repo: str
    path: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str  # regular files (for LFS files: the pointer's)
    what: str


@dataclass
class Plan:
    """Everything the asked names need: hub files (with their repository's commit and licence) and packs."""

    entries: list[HubEntry] = field(default_factory=list)
    commits: dict[str, str] = field(default_factory=dict)
    licences: dict[str, str] = field(default_factory=dict)
    packs: list[Pack] = field(default_factory=list)

    def cached(self, entry: HubEntry) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(entry.repo, entry.path, revision=self.commits[entry.repo])
        return found if isinstance(found, str) else None


# ---------------------------------------------------------------------------------------------------------
# What a preset needs
# ---------------------------------------------------------------------------------------------------------


def needs_of(preset, *, base_model: str | None = None, with_style: bool = True,
             speed: str | None = None, tiny_decoder: bool = False) -> tuple[list[Need], list[Pack]]:
    """The hub needs and the insightface packs of `preset`, read from its fields (see the module's doc);
    `speed` replaces the preset's speed model ("" for none); `tiny_decoder`: its TAESD too (`--decoder tiny`)."""
    from .presets import HubFile

    needs, packs = [], []
    if tiny_decoder and not getattr(preset, "flux", False):
        needs.append(tiny_decoder_need(tiny_decoder_name(sdxl=getattr(preset, "sdxl", False))))
    base = base_model or preset.base_model
    if base and _is_hub_id(base):
        needs.append(Need(base, "pipeline", "", "base model"))
    sources = [(f.name, getattr(preset, f.name)) for f in dataclasses.fields(preset)]
    speed = getattr(preset, "speed", "") if speed is None else speed
    if speed:
        sources += _speed_fields(speed)
    with_style = with_style and getattr(preset, "style_adapter", None) is not None  # no style adapter: none
    for name, value in sources:
        if name.startswith("style_") and not with_style:
            continue
        what = name.replace("_", " ")
        files = value if isinstance(value, (tuple, list)) else (value,)
        for item in files:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], HubFile):
                item, what = item  # (file, what it is), as in `encoder_files`
            if isinstance(item, HubFile):
                needs.append(Need(item.repo, "file", item.path, what))
        if name.endswith("encoder") and isinstance(value, str) and value and _is_hub_id(value):
            repo, subfolder = split_hub_path(value)
            needs.append(Need(repo, "folder", subfolder or "", what))
    pack = getattr(preset, "face_pack", "")
    if pack:
        packs.append(PACKS[pack])
    packs += [PACKS[f.key] for f in getattr(preset, "local_files", ()) if f.key in PACKS]
    return list(dict.fromkeys(needs)), list(dict.fromkeys(packs))


def needs_of_name(name: str, *, with_style: bool = True) -> tuple[list[Need], list[Pack]]:
    """`facestudio download NAME`: a preset, a speed model, a release file (`PACKS`) or a pipeline's hub id."""
    from .presets import PRESETS

    if name in PRESETS:
        return needs_of(PRESETS[name], with_style=with_style)
    if name in PACKS:
        return [], [PACKS[name]]
    if name in TINY_DECODERS:
        return [tiny_decoder_need(name)], []
    fields = _speed_fields(name)
    if fields:
        from .presets import HubFile

        return [Need(v.repo, "file", v.path, "speed model")
                for _, v in fields if isinstance(v, HubFile)], []
    if _is_hub_id(name):
        return [Need(name, "pipeline", "", "base model")], []
    speeds = ", ".join(_speed_names())
    raise FaceStudioError(f"download {name!r}: not a preset ({', '.join(PRESETS)}), an insightface pack "
                          f"({', '.join(PACKS)}), a speed model ({speeds}), a tiny decoder "
                          f"({', '.join(TINY_DECODERS)}) or a model hub id (owner/name)")


#: The tiny decoders (TAESD for SD 1.x/2.x, TAESDXL for SDXL; MIT) by download name: diffusers model folders.
TINY_DECODERS = {"taesd": "madebyollin/taesd", "taesdxl": "madebyollin/taesdxl"}


def tiny_decoder_name(sdxl: bool) -> str:
    """The `TINY_DECODERS` name of the tiny decoder for an SD (False) or SDXL (True) base."""
    return "taesdxl" if sdxl else "taesd"


def tiny_decoder_need(name: str) -> Need:
    return Need(TINY_DECODERS[name], "folder", "", "tiny decoder")


def _speed_fields(name: str) -> list[tuple[str, object]]:
    from .sampling.speed import SPEED_MODELS

    model = SPEED_MODELS.get(name)
    if model is None:
        return []
    return [("speed_" + f.name, getattr(model, f.name)) for f in dataclasses.fields(model)]


def _speed_names() -> list[str]:
    from .sampling.speed import SPEED_MODELS

    return list(SPEED_MODELS)


def split_hub_path(name: str) -> tuple[str, str | None]:
    """`"owner/repo/sub/folder"` -> `("owner/repo", "sub/folder")`; a local folder or a plain id is kept whole."""
    parts = name.split("/")
    if Path(name).expanduser().exists() or len(parts) <= 2:
        return name, None
    return "/".join(parts[:2]), "/".join(parts[2:])


def _is_hub_id(name: str) -> bool:
    if name == "tiny" or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    return len(name.split("/")) >= 2


# ---------------------------------------------------------------------------------------------------------
# Asking the hub
# ---------------------------------------------------------------------------------------------------------


def plan(needs: list[Need], packs: list[Pack]) -> Plan:
    """Ask the hub what each repository holds and pick the files (sizes known before anything large comes)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    result = Plan(packs=list(dict.fromkeys(packs)))
    api = HfApi()
    by_repo: dict[str, list[Need]] = {}
    for need in needs:
        by_repo.setdefault(need.repo, []).append(need)
    for repo, repo_needs in by_repo.items():
        try:
            info = api.model_info(repo, files_metadata=True)
        except HfHubHTTPError as e:
            raise ModelFileError(f"model hub repository {repo}: {_first_line(e)}") from None
        result.commits[repo] = info.sha
        siblings = {s.rfilename: s for s in info.siblings or ()}
        result.licences[repo] = _licence(repo, info)
        for need in repo_needs:
            if need.kind == "file":
                paths = [need.path]
            elif need.kind == "folder":
                paths = model_folder_files(siblings, need.path)
            else:
                index = json.loads(Path(hf_hub_download(repo, "model_index.json", revision=info.sha)).read_text())
                paths = pipeline_files(siblings, index)
            for path in paths:
                sibling = siblings.get(path)
                if sibling is None:
                    raise ModelFileError(f"model hub repository {repo} has no {path} ({need.what})")
                result.entries.append(HubEntry(repo, path, sibling.size or 0,
                                               sibling.lfs.sha256 if sibling.lfs else None, sibling.blob_id, need.what))
    result.entries = list(dict.fromkeys(result.entries))
    return result


#: Components a facestudio pipeline is built without (diffusers does not load them when passed as None).
SKIPPED_COMPONENTS = ("safety_checker",)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def pipeline_files(listing, model_index: dict, skip=SKIPPED_COMPONENTS) -> list[str]:
    """The files of a diffusers pipeline repository that `from_pretrained` loads, as diffusers picks them:
    `model_index.json`; for each component with weights its `config.json` and one non-variant weights file
    (safetensors first); every file of a component folder without weights (tokenizer, scheduler, ...)."""
    files = ["model_index.json"]
    components = [k for k, v in model_index.items()
                  if not k.startswith("_") and isinstance(v, list) and v[0] is not None and k not in skip]
    for component in components:
        inside = sorted(p for p in listing if p.startswith(component + "/") and p.count("/") == 1)
        weights = _weights(inside)
        files += [p for p in inside if p.endswith("/config.json")] + weights if weights else inside
    return list(dict.fromkeys(files))


def model_folder_files(listing, folder: str) -> list[str]:
    """A transformers model folder: its `*.json` files and one weights file (safetensors first)."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    inside = sorted(p for p in listing if p.startswith(prefix) and "/" not in p[len(prefix):])
    return list(dict.fromkeys([p for p in inside if p.endswith(".json")] + _weights(inside)))


def _weights(paths: list[str]) -> list[str]:
    """The non-variant weights (`name.safetensors`, shards `name-00001-of-00002.safetensors` with their index),
    safetensors when there are any, else `.bin`; variants such as `name.fp16.safetensors` are left out."""
    for suffix in _WEIGHT_SUFFIXES:
        plain = [p for p in paths if p.endswith(suffix) and p.rsplit("/", 1)[-1].count(".") == 1]
        if plain:
            return plain + [p for p in paths if p.endswith(suffix + ".index.json") and
                            p.rsplit("/", 1)[-1].count(".") == 3]
    return []


def _licence(repo: str, info) -> str:
    if repo in KNOWN_LICENCES:
        return KNOWN_LICENCES[repo]
    card = getattr(info, "card_data", None)
    licence = card.get("license") if card is not None else None
    licence = licence or next((t.removeprefix("license:") for t in info.tags or () if t.startswith("license:")), None)
    return licence or "not stated: read the model card before use"


# ---------------------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------------------


def accept_licences(packs: list[Pack], accepted: set[str], *, interactive: bool | None = None) -> None:
    """Stop unless insightface's non-commercial licence is accepted (by flag, or at a prompt on a terminal)
    when an insightface pack is among `packs`."""
    packs = [p for p in packs if p.licence]
    if not packs or INSIGHTFACE_LICENSE in accepted:
        return
    names = ", ".join(p.name for p in packs)
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive:
        print(f"{names}: {INSIGHTFACE_LICENSE_TEXT}.", file=sys.stderr)
        answer = input("Accept that licence and download? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return
    raise FaceStudioError(f"{names} (insightface's face models): {INSIGHTFACE_LICENSE_TEXT}; accept it with "
                          f"--accept-license {INSIGHTFACE_LICENSE} to download")


def describe(result: Plan, out=sys.stderr) -> tuple[int, int]:
    """Print every file with its size and licence; returns (bytes in all, bytes to download)."""
    total = missing = 0
    for repo in result.commits:
        entries = [e for e in result.entries if e.repo == repo]
        print(f"{repo} (licence: {result.licences[repo]})", file=out)
        for entry in entries:
            here = result.cached(entry) is not None
            total += entry.size
            missing += 0 if here else entry.size
            print(f"  {entry.path:<52} {human_size(entry.size):>9}  {'cached' if here else entry.what}", file=out)
    for pack in result.packs:
        here = pack.present()
        total += pack.size
        missing += 0 if here else pack.size
        print(f"{pack.publisher} {pack.name} ({pack.url}; licence: {pack.licence_text})", file=out)
        shown = pack.name + ".zip" if pack.archive else pack.main_file
        print(f"  {shown:<52} {human_size(pack.size):>9}  {'here' if here else 'face models'}", file=out)
    print(f"{human_size(total)} in all, {human_size(missing)} to download", file=out)
    return total, missing


def fetch(result: Plan, out=sys.stderr) -> int:
    """Download what is missing (a progress bar per file), check every file's hash; returns how many files
    were downloaded. A file whose hash does not match is removed and named in a `ModelFileError`."""
    from huggingface_hub import hf_hub_download

    fetched = 0
    todo = [e for e in result.entries if result.cached(e) is None]
    for i, entry in enumerate(result.entries):
        path = result.cached(entry)
        if path is None:
            print(f"[{todo.index(entry) + 1}/{len(todo)}] {entry.repo}/{entry.path} ({human_size(entry.size)})",
                  file=out)
            path = hf_hub_download(entry.repo, entry.path, revision=result.commits[entry.repo],
                                   tqdm_class=_progress_bar())
            fetched += 1
        _check_hash(entry, Path(path))
    for repo, commit in result.commits.items():
        _point_main_at(repo, commit)
    for pack in result.packs:
        if not pack.present():
            fetch_pack(pack, out=out)
            fetched += 1
    return fetched


def _point_main_at(repo: str, commit: str) -> None:
    """`refs/main` of the cached repository names the commit fetched (a download by commit hash writes no
    ref), so that loading by name, and offline, finds these files."""
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)


def _check_hash(entry: HubEntry, path: Path) -> None:
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    with path.open("rb") as f:
        actual, expected = (sha_fileobj(f).hex(), entry.sha256) if entry.sha256 else (git_hash(f.read()), entry.git_sha1)
    if expected and actual != expected:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob != path:
            blob.unlink(missing_ok=True)
        raise ModelFileError(f"{entry.repo}/{entry.path}: damaged download ({'sha256' if entry.sha256 else 'git sha1'} "
                             f"{actual}, the hub says {expected}); removed it, run the command again")


def _progress_bar():
    """huggingface_hub's bar, also shown when stderr is not a terminal (logs see the progress too)."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Bar(hub_tqdm):
        def __init__(self, *args, **kwargs):
            if kwargs.get("disable") is None:
                kwargs["disable"] = False
            kwargs.setdefault("mininterval", 0.5)
            super().__init__(*args, **kwargs)

    return Bar


def fetch_pack(pack: Pack, out=sys.stderr) -> Path:
    """Download `pack` (resuming a `.part` left by an interrupted run), check its sha256 (or, where none is
    published, that every byte the server announced came), then unpack the zip or move the file into place."""
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    pack.folder.parent.mkdir(parents=True, exist_ok=True)
    target = pack.folder / pack.main_file
    part = pack.folder.parent / f"{pack.name}.zip.part" if pack.archive else target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    total = None
    print(f"{pack.publisher} {pack.name}: {pack.url}", file=out)
    request = urllib.request.Request(pack.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # follows GitHub's redirect
            if response.status != 206:
                have = 0  # the server sent the whole file
            total = have + int(response.headers.get("Content-Length", 0)) or None
            with part.open("ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                    file=out, mininterval=0.5) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: the part is already whole
            raise ModelFileError(f"{pack.publisher} {pack.name}: could not download {pack.url} (HTTP {e.code})") \
                from None
    except (urllib.error.URLError, OSError) as e:
        raise ModelFileError(f"{pack.publisher} {pack.name}: could not download {pack.url} "
                             f"({getattr(e, 'reason', e)}); run the command again to resume") from None
    _check_release_file(pack, part, total)
    if pack.archive:
        _unpack(part, pack)
        part.unlink()
    else:
        part.replace(target)
    return pack.folder


def _check_release_file(pack: Pack, part: Path, total: int | None) -> None:
    """The sha256 of the whole download, or its length where no hash is published; a damaged file is removed."""
    if pack.expected_sha256:
        digest = hashlib.sha256()
        with part.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        actual, expected, what = digest.hexdigest(), pack.expected_sha256, "sha256"
    else:
        actual, expected, what = part.stat().st_size, total or part.stat().st_size, "size"
    if actual != expected:
        part.unlink()
        raise ModelFileError(f"{pack.publisher} {part.name.removesuffix('.part')}: damaged download ({what} {actual}, "
                             f"expected {expected}); removed it, run the command again")


def _unpack(archive: Path, pack: Pack) -> None:
    """Unpack into a temporary folder, then move into place: the files at the top (antelopev2's zip has them
    inside an `antelopev2/` folder, buffalo_l's at its top level); no member may leave the folder."""
    staging = pack.folder.with_name(pack.folder.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(archive) as z:
        for member in z.infolist():
            if member.is_dir():
                continue
            name = Path(member.filename.removeprefix(pack.name + "/"))
            if name.is_absolute() or ".." in name.parts:
                raise ModelFileError(f"insightface {pack.name}.zip: unsafe member {member.filename!r}")
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    if not (staging / pack.main_file).is_file():
        shutil.rmtree(staging)
        raise ModelFileError(f"insightface {pack.name}.zip has no {pack.main_file}")
    if pack.folder.exists():
        shutil.rmtree(pack.folder)
    staging.rename(pack.folder)


# ---------------------------------------------------------------------------------------------------------
# Without asking the hub: what is missing from the cache
# ---------------------------------------------------------------------------------------------------------


def missing_offline(needs: list[Need], packs: list[Pack]) -> list[str]:
    """What is not in huggingface_hub's cache or insightface's folder, judged without the network (each
    repository's cached `main` snapshot: a pipeline's components and a folder's config and weights)."""
    from huggingface_hub import try_to_load_from_cache

    missing = []
    for need in needs:
        if need.kind == "file":
            ok = isinstance(try_to_load_from_cache(need.repo, need.path), str)
        else:
            index = try_to_load_from_cache(need.repo, "model_index.json" if need.kind == "pipeline"
                                           else f"{need.path}/config.json".lstrip("/"))
            ok = isinstance(index, str)
            if ok and need.kind == "pipeline":
                snapshot = Path(index).parent
                model_index = json.loads(Path(index).read_text())
                wanted = [k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list)
                          and v[0] is not None and k not in SKIPPED_COMPONENTS]
                ok = all(_folder_complete(snapshot / k) for k in wanted)
            elif ok:
                ok = _folder_complete(Path(index).parent)
        if not ok:
            missing.append(f"{need.what}: {need.repo}" + (f"/{need.path}" if need.path else ""))
    missing += [f"{p.publisher} {p.name} ({p.folder / p.main_file})" for p in packs if not p.present()]
    return missing


def _folder_complete(folder: Path) -> bool:
    """A component folder with its weights, or one that needs none (no config.json: tokenizer, scheduler)."""
    if not folder.is_dir():
        return False
    names = [p.name for p in folder.iterdir()]
    return bool(_weights(names)) or ("config.json" not in names and bool(names))


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _first_line(error: BaseException) -> str:
    from .errors import first_line

    return first_line(error)
