"""The `facestudio` command line.

    facestudio faces IMAGE [IMAGE ...] [--json] [--draw OUT.png] [--embeddings]
    facestudio compare A B [--face N | --face-a N --face-b N] [--json]
    facestudio generate --prompt TEXT --base-model MODEL [--identity PHOTO[,PHOTO...] ...] [--adapter A] ...
    facestudio mix A B --ratio R --base-model MODEL --adapter A [--prompt TEXT] ...
    facestudio generate --preset NAME --prompt TEXT --identity PHOTO ...   (public weights by name)
    facestudio convert FILE.bin [--output FILE.safetensors]
    facestudio download PRESET|NAME... [--accept-license insightface-noncommercial]   (model files, once)
    facestudio prepare DATA_DIR OUT [--resolution 512]
    facestudio train CACHE --output DIR [--base-model MODEL --image-encoder MODEL] [--resume latest] ...
    facestudio serve [--base-model MODEL --adapter A | --preset NAME] [--host 127.0.0.1] [--port 7860]
    facestudio eval FOLDER | --spec RUN.toml [--identity NAME=PHOTO,...] [--held-out ...] [--clip MODEL]

Input errors (unreadable image, no face, ambiguous face, missing model, bad settings) and the file system's
refusals (full or read-only disk, a folder in a file's place) print one line naming the problem and exit with
status 2; `--debug` shows the traceback of anything unexpected, and the libraries' warnings. One module per
group of commands: `faces.py` (faces, compare), `generate.py` (generate, mix), `convert.py`, `download.py`, `training.py`
(prepare, train), `serve.py`, `evaluate.py` (eval); `output.py` keeps a failed run from leaving empty folders.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .. import __version__
from ..errors import FaceStudioError, os_error_message

EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Smallest image worth searching for a face.
MIN_IMAGE_SIDE = 32


def quiet_libraries(debug: bool) -> None:
    """diffusers' and transformers' notes about features the commands do not use, off unless --debug."""
    if debug:
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def require_extra(extra: str, command: str, modules: tuple[str, ...]) -> None:
    """Stop with one line when an optional dependency of `command` is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise FaceStudioError(f"facestudio {command} needs the {extra} extra ({', '.join(missing)} missing): "
                              f"pip install 'facestudio[{extra}]'")


def build_parser() -> argparse.ArgumentParser:
    from . import convert, download, evaluate, faces, generate, serve, training

    parser = argparse.ArgumentParser(prog="facestudio", description="Identity-preserving image generation.")
    parser.add_argument("--version", action="version", version=f"facestudio {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks of unexpected errors, and the libraries' warnings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    faces.add_commands(commands)
    generate.add_commands(commands)
    convert.add_commands(commands)
    download.add_commands(commands)
    training.add_commands(commands)
    serve.add_commands(commands)
    evaluate.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `facestudio` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="note: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("facestudio").setLevel(logging.INFO)
    if not args.debug:  # libraries' Future/DeprecationWarnings speak to developers; facestudio itself logs
        warnings.simplefilter("ignore")
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers, not in the interpreter's exit
        return code
    except FaceStudioError as e:
        print(f"facestudio: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("facestudio: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout left (`| head`): nothing to report, nothing more to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush stays quiet
        return EXIT_OK
    except Exception as e:
        # A full or read-only disk, a folder in a file's place: the file system's answer, for the user to act
        # on. An OSError without an errno is no file system's answer but a library's complaint.
        if isinstance(e, OSError) and e.errno is not None:
            print(f"facestudio: error: {os_error_message(e)}", file=sys.stderr)
            return EXIT_INPUT
        if args.debug:
            raise
        print(f"facestudio: internal error: {type(e).__name__}: {e} (run with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return EXIT_BUG
