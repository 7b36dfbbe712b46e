"""`facestudio serve`: the local web app and HTTP API (FastAPI on uvicorn).

Bound to 127.0.0.1 by default: only this machine can reach it. Binding another address needs a bearer token
(`--token`, or one is generated and printed), because anyone who can reach the port could otherwise make
images with your photos.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import secrets
import socket
from pathlib import Path

from ..errors import FaceStudioError
from ..presets import PRESETS
from ..request import DEFAULT_STEPS
from . import EXIT_OK, quiet_libraries

logger = logging.getLogger(__name__)

#: Where the data folder goes when --data-dir is not given.
DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "facestudio" / "server"


def add_commands(commands) -> None:
    serve = commands.add_parser(
        "serve", help="the local web app and HTTP API",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the facestudio web page and its HTTP API (/v1/..., schema at /openapi.json).\n\n"
                    "By default only this machine can connect (127.0.0.1). With --host set to another\n"
                    "address every API request needs 'Authorization: Bearer TOKEN'; the token is --token or\n"
                    "one generated and printed at start. Only use photos of people who agreed to it.",
        epilog="example: facestudio serve --base-model ./sd15 --adapter ./faceid-adapter\n"
               "         then open http://127.0.0.1:7860/")
    models = serve.add_argument_group("models")
    models.add_argument("--base-model", metavar="tiny|FOLDER|HUB_ID",
                        help="the Stable Diffusion pipeline: a local folder, a model hub id, or 'tiny' (random "
                             "weights: smoke tests only). Needed without --preset; with it, replaces its base")
    models.add_argument("--adapter", metavar="FOLDER|tiny", help="identity adapter folder, or 'tiny' (untrained)")
    models.add_argument("--style-adapter", metavar="FOLDER|tiny", help="style adapter folder, or 'tiny'")
    models.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help=f"public weights by name, instead of --adapter: {', '.join(PRESETS)} (FaceID presets "
                             "are non-commercial)")
    models.add_argument("--arcface-model", metavar="FILE",
                        help="insightface buffalo_l's w600k_r50.onnx, for the FaceID presets")
    from .generate import PULID_MODES, add_local_file_options

    add_local_file_options(models)
    models.add_argument("--pulid-mode", choices=PULID_MODES, metavar="MODE",
                        help="PuLID presets: fidelity (default), extremely-style or neutral, for every job")
    models.add_argument("--speed", metavar="NAME",
                        help="a few-step speed LoRA (see `facestudio speed-models`); its sampler, steps and guidance "
                             "become the server's defaults; 'none' turns a preset's off")
    models.add_argument("--speed-weights", metavar="FILE", help="the --speed LoRA from this local file")
    models.add_argument("--previews", action="store_true",
                        help="load the tiny decoder (TAESD) and send a preview image of every step to the page")
    models.add_argument("--decoder", choices=("full", "tiny"), default="full",
                        help="what decodes the images when a job does not say: 'full' (the model's VAE, default) "
                             "or 'tiny' (TAESD: fast on a CPU, a little less detail; implies --previews)")
    models.add_argument("--tiny-decoder", metavar="FOLDER|HUB_ID",
                        help="the AutoencoderTiny to use (default madebyollin/taesd, or taesdxl for SDXL)")
    from .generate import add_download_options

    add_download_options(models)
    models.add_argument("--device", choices=("cpu", "cuda", "mps"),
                        help="where to run (default: CUDA, else MPS, else the CPU)")
    models.add_argument("--cpu-offload", action="store_true", help="keep each model on the CPU until it runs")
    models.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles")
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    server.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    server.add_argument("--token", help="bearer token the API requires (generated when --host is not loopback)")
    server.add_argument("--a1111", action="store_true",
                        help="also serve the AUTOMATIC1111-compatible API (/sdapi/v1/txt2img with ControlNet "
                             "IP-Adapter units, sd-models, samplers, progress, ...), as A1111's --api; the token "
                             "then also works as the basic-auth password A1111 clients send")
    server.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), metavar="DIR",
                        help=f"identities, uploads and results (default {DEFAULT_DATA_DIR})")
    server.add_argument("--queue-size", type=int, default=16, metavar="N",
                        help="jobs allowed to wait; more get 429 (default 16)")
    server.add_argument("--workers", type=int, default=1, metavar="N",
                        help="jobs run at once (default 1: one per device)")
    server.add_argument("--job-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="a job running longer is stopped (default 600)")
    server.add_argument("--keep-jobs", type=int, default=200, metavar="N",
                        help="finished jobs (and uploaded images) kept in the data folder (default 200)")
    server.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                        help="largest request body (default 20)")
    server.add_argument("--max-side", type=int, default=1024, metavar="PX",
                        help="largest image side a job may ask for (default 1024)")
    server.add_argument("--default-steps", type=int, metavar="N",
                        help=f"denoising steps when a job gives none (default: the --speed model's, else the "
                             f"preset's, else {DEFAULT_STEPS})")
    server.add_argument("--upload-workers", type=int, default=2, metavar="N",
                        help="uploads decoded at once; 16 more may wait, others get 429 (default 2)")
    server.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="a request's headers must arrive within this, or 408 (default 10)")
    server.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="a request's body must arrive within this, plus 1 s per 256 KiB, or 408 (default 30)")
    serve.set_defaults(run=run_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args) -> int:
    for name, value, low in (("--port", args.port, 0), ("--queue-size", args.queue_size, 1),
                             ("--workers", args.workers, 1), ("--keep-jobs", args.keep_jobs, 1),
                             ("--max-side", args.max_side, 64),
                             ("--default-steps", 1 if args.default_steps is None else args.default_steps, 1),
                             ("--upload-workers", args.upload_workers, 1)):
        if value < low:
            raise FaceStudioError(f"{name} {value}: must be at least {low}")
    if args.port > 65535:
        raise FaceStudioError(f"--port {args.port}: must be at most 65535")
    if not all(v > 0 for v in (args.max_upload_mb, args.job_timeout, args.header_timeout, args.body_timeout)):
        raise FaceStudioError("--max-upload-mb, --job-timeout, --header-timeout and --body-timeout must be positive")
    if args.token is not None and len(args.token) < 16:
        raise FaceStudioError("--token: use at least 16 characters")
    if args.base_model is None and args.preset is None:
        raise FaceStudioError("give --base-model (a folder, a hub id or 'tiny') or --preset")
    from .generate import local_files_of, refuse_flux_options

    refuse_flux_options(args)

    preset_options = {k: v for k, v in (("local_files", local_files_of(args)), ("pulid_mode", args.pulid_mode)) if v}
    if preset_options and (args.preset is None or PRESETS[args.preset].projection not in ("pulid", "pulid-flux")):
        raise FaceStudioError("--pulid-mode, --antelopev2-model and --bisenet-model are for the PuLID presets")
    if args.pulid_mode and PRESETS[args.preset].flux:
        raise FaceStudioError("--pulid-mode is for the PuLID SDXL presets (PuLID-FLUX has no modes)")
    if args.speed not in (None, "none"):
        from ..presets import check_speed_available
        from ..sampling.speed import get_speed_model

        get_speed_model(args.speed, "--speed")
        if args.preset is None:
            check_speed_available(args.speed, args.speed_weights)
    token = args.token
    if token is None and not is_loopback(args.host):
        token = secrets.token_urlsafe(24)
    data_dir = Path(args.data_dir).expanduser()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise FaceStudioError(f"--data-dir {args.data_dir}: cannot create it ({e.strerror})") from None

    quiet_libraries(args.debug)
    try:
        import uvicorn

        from ..server import create_app
        from ..server.storage import DataFolder
        from ..server.timeouts import uvicorn_config
    except ImportError as e:
        raise FaceStudioError(f"facestudio serve needs the server extra ({e.name} is missing): "
                              "pip install 'facestudio[server]'") from None
    from ..loading import load_generation_pipeline

    # Whatever can fail on the spot fails before the models load: a data folder that cannot be written
    # (read-only, full: StorageError naming it), a port already taken.
    data = DataFolder(data_dir, max_jobs=args.keep_jobs)
    listener = _listen(args.host, args.port)

    if args.preset is not None:  # a preset's missing files are fetched now, if the user agrees
        from ..presets import ensure_available, get_preset

        ensure_available(get_preset(args.preset), download=args.download, accepted=set(args.accept_license),
                         base_model=args.base_model, with_style=True, arcface_model=args.arcface_model,
                         speed=args.speed, speed_weights=args.speed_weights,
                         local_files=preset_options.get("local_files"),
                         tiny_decoder=(args.previews or args.decoder == "tiny") and args.tiny_decoder is None)
    logger.info("loading models")
    pipe = load_generation_pipeline(args.base_model, adapter=args.adapter, style_adapter=args.style_adapter,
                                    preset=args.preset, device=args.device, cpu_offload=args.cpu_offload,
                                    vae_tiling=args.vae_tiling, arcface_model=args.arcface_model, speed=args.speed,
                                    speed_weights=args.speed_weights, **preset_options)
    if args.previews or args.decoder == "tiny" or args.tiny_decoder:
        from ..decoding import load_tiny_decoder

        load_tiny_decoder(pipe, args.tiny_decoder)
        pipe.default_decoder = args.decoder
    pipe.set_progress_bar_config(disable=True)  # progress goes to the page and the event stream
    app = create_app(pipe, data, queue_size=args.queue_size, workers=args.workers, token=token,
                     job_timeout=args.job_timeout, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     max_side=args.max_side, default_steps=args.default_steps, max_jobs=args.keep_jobs,
                     base_model=str(args.base_model or PRESETS[args.preset].base_model), allowed_hosts={args.host},
                     upload_workers=args.upload_workers, a1111=args.a1111)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{args.port}/"
    print(f"facestudio: serving {url} (data in {data_dir})", flush=True)
    if args.a1111:
        print(f"facestudio: AUTOMATIC1111-compatible API at {url}sdapi/v1/", flush=True)
    if token is not None:
        print(f"facestudio: listening on {args.host}, so every API request needs the header "
              f"'Authorization: Bearer {token}'", flush=True)
        print(f"facestudio: page with the token: {url}#token={token}", flush=True)
    # A bounded graceful shutdown (open progress streams must not keep Ctrl-C waiting) and slow-client deadlines.
    config = uvicorn_config(app, args.host, args.port, header_timeout=args.header_timeout,
                            body_timeout=args.body_timeout)
    uvicorn.Server(config).run(sockets=[listener])
    return EXIT_OK


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` (uvicorn listens on it), or one line saying why not."""
    # IPv6 only for an address with a colon, as uvicorn binds: "localhost" resolves to ::1 first on many
    # systems, and a server on ::1 alone refuses clients of 127.0.0.1.
    want = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family = socket.getaddrinfo(host, port, family=want, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise FaceStudioError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        if e.errno == errno.EADDRINUSE:
            raise FaceStudioError(f"--port {port}: port {port} is in use on {host} (another server?); "
                                  "stop it or choose another --port") from None
        raise FaceStudioError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return listener
