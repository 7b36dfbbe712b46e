"""`facestudio convert`: a pickled IP-Adapter checkpoint (.bin) to flat safetensors, once, safely."""

from __future__ import annotations

from pathlib import Path

from . import EXIT_OK
from .output import removed_if_left_empty


def add_commands(commands) -> None:
    convert = commands.add_parser(
        "convert", help="turn a .bin IP-Adapter checkpoint into .safetensors",
        description="Read a pickled IP-Adapter checkpoint with torch.load(weights_only=True), which cannot run "
                    "code, and write the flat safetensors layout diffusers and facestudio load; later loads "
                    "never unpickle.")
    convert.add_argument("source", metavar="FILE.bin")
    convert.add_argument("--output", metavar="FILE.safetensors", help="default: FILE.safetensors beside it")
    convert.add_argument("--force", action="store_true", help="replace an existing output file")
    convert.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from ..guidance.layout import convert_pickle_checkpoint

    folder = Path(args.output).parent if args.output else Path(args.source).parent
    with removed_if_left_empty(folder):  # a conversion that cannot be written leaves no folder behind
        print(convert_pickle_checkpoint(args.source, args.output, overwrite=args.force))
    return EXIT_OK
