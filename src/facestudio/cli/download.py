"""`facestudio download PRESET|NAME...`: the files a preset needs, with sizes and licences shown first."""

from __future__ import annotations

import argparse
import sys

from . import EXIT_OK


def add_commands(commands) -> None:
    from ..downloads import INSIGHTFACE_LICENSE, PACKS
    from ..presets import PRESETS

    download = commands.add_parser(
        "download", help="fetch the model files of a preset (or a model) before first use",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fetch only the files NAME needs into the model hub cache (huggingface_hub's, HF_HOME) and "
                    "insightface's folder (~/.insightface/models; facexlib's BiSeNet in ~/.cache/facestudio): "
                    "sizes and licences first, then a progress "
                    "bar per file; every file's hash is checked, and files already there are checked and kept "
                    "(run it again after an interruption: finished files stay).\n\n"
                    f"NAME: a preset ({', '.join(PRESETS)}), a release file ({', '.join(PACKS)}: insightface's face models, facexlib's face parser), a speed "
                    "model, or a diffusers pipeline's hub id.",
        epilog=f"example: facestudio download faceid-plusv2-sd15 --accept-license {INSIGHTFACE_LICENSE}")
    download.add_argument("names", nargs="+", metavar="NAME")
    download.add_argument("--accept-license", action="append", default=[], metavar=INSIGHTFACE_LICENSE,
                          choices=[INSIGHTFACE_LICENSE],
                          help="accept insightface's non-commercial licence for its face models (else a prompt "
                               "asks on a terminal; without either they are not downloaded)")
    download.add_argument("--no-style", action="store_true",
                          help="leave out the style adapter and its image encoder (only needed with --style)")
    download.add_argument("--dry-run", action="store_true", help="show what would be fetched, fetch nothing")
    download.set_defaults(run=run_download)


def run_download(args) -> int:
    from .. import downloads
    from ..errors import ModelFileError
    from ..presets import _hub_reachable

    needs, packs = [], []
    for name in args.names:
        n, p = downloads.needs_of_name(name, with_style=not args.no_style)
        needs += n
        packs += p
    needs, packs = list(dict.fromkeys(needs)), list(dict.fromkeys(packs))
    if not _hub_reachable():
        missing = downloads.missing_offline(needs, packs)
        if missing:
            command = (f"facestudio download {' '.join(args.names)}" + (" --no-style" if args.no_style else "")
                       + (f" --accept-license {downloads.INSIGHTFACE_LICENSE}"
                          if any(p.licence and not p.present() for p in packs) else ""))
            raise ModelFileError("offline, and these files are not here:\n  - " + "\n  - ".join(missing)
                                 + f"\nwhere you have a connection, run: {command}")
        print("offline; everything is already here", file=sys.stderr)
        return EXIT_OK
    if not args.dry_run:
        downloads.accept_licences([p for p in packs if not p.present()], set(args.accept_license))
    result = downloads.plan(needs, packs)
    downloads.describe(result)
    if args.dry_run:
        return EXIT_OK
    fetched = downloads.fetch(result)
    print(f"downloaded {fetched} file{'' if fetched == 1 else 's'}; all {len(result.entries) + len(result.packs)} "
          "checked" if fetched else "nothing to download: every file is here and its hash checked", file=sys.stderr)
    return EXIT_OK
