"""`facestudio faces` and `facestudio compare`: what the face analysis sees in photos."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import FaceStudioError
from . import EXIT_INPUT, EXIT_OK, MIN_IMAGE_SIDE
from .output import removed_if_left_empty


def add_commands(commands) -> None:
    faces = commands.add_parser("faces", help="find the faces in images",
                                description="List the faces in each image, largest first: box, score, "
                                            "landmarks and size.")
    faces.add_argument("images", nargs="+", metavar="IMAGE")
    faces.add_argument("--json", action="store_true", help="print JSON instead of a table")
    faces.add_argument("--draw", metavar="OUT", help="write a PNG with the faces drawn on the image; "
                                                     "with several images, a folder")
    faces.add_argument("--embeddings", action="store_true", help="include each face's identity embedding "
                                                                 "in the JSON")
    _add_detector_options(faces)
    faces.set_defaults(run=run_faces)

    compare = commands.add_parser("compare", help="say whether two photos show the same person",
                                  description="Cosine similarity of the two faces' identity embeddings, "
                                              "and the same-person verdict under the recogniser's threshold.")
    compare.add_argument("image_a", metavar="A")
    compare.add_argument("image_b", metavar="B")
    compare.add_argument("--face", type=int, metavar="N", help="face to use in both images (0 is the largest)")
    compare.add_argument("--face-a", type=int, metavar="N", help="face to use in A")
    compare.add_argument("--face-b", type=int, metavar="N", help="face to use in B")
    compare.add_argument("--json", action="store_true", help="print JSON")
    _add_detector_options(compare)
    compare.set_defaults(run=run_compare)


def _add_detector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-score", type=float, default=0.7, metavar="S",
                        help="detection score threshold in [0, 1] (default 0.7)")


def _analyzer(args):
    from ..faces import FaceAnalyzer, YuNetDetector

    if not 0.0 <= args.min_score <= 1.0:
        raise FaceStudioError(f"--min-score must be between 0 and 1, got {args.min_score}")
    return FaceAnalyzer(detector=YuNetDetector(score_threshold=args.min_score))


def run_faces(args) -> int:
    from tqdm import tqdm

    from ..faces.analysis import select_face
    from ..imaging import load_image

    draw_dir = _draw_destination(args.draw, len(args.images))
    analyzer = _analyzer(args)
    results, failed = [], 0
    for path in tqdm(args.images, desc="faces", unit="image", disable=len(args.images) < 2 or None):
        try:
            image = load_image(path, min_side=MIN_IMAGE_SIDE)
            faces = analyzer.detect(image)
            select_face(faces, index=0, source=path)  # no face is an error here too
            record = {"image": path, "width": image.width, "height": image.height,
                      "faces": [dict(index=i, **f.to_dict()) for i, f in enumerate(faces)]}
            if args.embeddings:
                for entry, emb in zip(record["faces"], analyzer.embed_faces(image, faces)):
                    entry["embedding"] = {"model": emb.model, "vector": [round(float(v), 6) for v in emb.vector]}
            if args.draw:
                out = Path(args.draw) if draw_dir is None else draw_dir / f"{Path(path).stem}.faces.png"
                with removed_if_left_empty(out.parent):  # a drawing that cannot be written leaves no folder
                    record["drawing"] = str(_write_drawing(image, faces, out, record))
        except FaceStudioError as e:
            if len(args.images) == 1:
                raise
            failed += 1
            record = {"image": path, "error": str(e)}
            print(f"facestudio: error: {e}", file=sys.stderr)
        results.append(record)
        if not args.json and "faces" in record:
            _print_faces_table(record)
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return EXIT_INPUT if failed else EXIT_OK


def _draw_destination(draw: str | None, count: int) -> Path | None:
    """Check `--draw` before any work: a .png file for one image, a folder for several."""
    if draw is None:
        return None
    if count == 1:
        if Path(draw).suffix.lower() != ".png":
            raise FaceStudioError(f"--draw {draw}: the drawing is written as PNG; give a path ending in .png")
        if Path(draw).is_dir():
            raise FaceStudioError(f"--draw {draw}: is a folder; give a file path ending in .png")
        return None
    if Path(draw).exists() and not Path(draw).is_dir():
        raise FaceStudioError(f"--draw {draw}: with several images, --draw names a folder")
    return Path(draw)


def _print_faces_table(record: dict) -> None:
    faces = record["faces"]
    print(f"{record['image']}: {len(faces)} face{'s' if len(faces) != 1 else ''} "
          f"({record['width']}x{record['height']} pixels)")
    print(f"  {'#':>2}  {'box x0,y0,x1,y1':<24} {'score':>5}  {'size':>9}  {'eyes':>7}")
    for f in faces:
        box = ",".join(str(round(v)) for v in f["box"])
        size = f"{round(f['width'])}x{round(f['height'])}"
        print(f"  {f['index']:>2}  {box:<24} {f['score']:>5.2f}  {size:>9}  {f['eye_distance']:>5.0f}px")
    if "drawing" in record:
        print(f"  drawing: {record['drawing']}")


def _write_drawing(image, faces, out: Path, record: dict) -> Path:
    from PIL import ImageDraw

    from ..imaging import save_png

    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(image.size) / 400))
    colours = [(0, 230, 64), (255, 170, 0), (0, 170, 255), (255, 64, 160)]
    for i, face in enumerate(faces):
        colour = colours[i % len(colours)]
        draw.rectangle(face.box, outline=colour, width=line)
        for x, y in face.landmarks:
            draw.ellipse((x - 2 * line, y - 2 * line, x + 2 * line, y + 2 * line), fill=(255, 0, 0))
        label = f"{i}  {face.score:.2f}"
        x0, y0 = face.box[0], max(0, face.box[1] - 12 * line)
        text_box = draw.textbbox((x0, y0), label, font_size=10 * line)
        draw.rectangle(text_box, fill=colour)
        draw.text((x0, y0), label, fill=(0, 0, 0), font_size=10 * line)
    return save_png(canvas, out, metadata={k: v for k, v in record.items() if k != "drawing"})


def run_compare(args) -> int:
    from ..faces.analysis import select_face
    from ..faces.identity import SAME_PERSON_THRESHOLDS, cosine_similarity, is_same_person
    from ..imaging import load_image

    analyzer = _analyzer(args)
    chosen = []
    for path, index in ((args.image_a, _pick(args.face_a, args.face)), (args.image_b, _pick(args.face_b, args.face))):
        image = load_image(path, min_side=MIN_IMAGE_SIDE)
        faces = analyzer.detect(image)
        face = select_face(faces, index=index, source=path)
        chosen.append((path, faces.index(face), len(faces), analyzer.embed(image, face)))
    (path_a, index_a, count_a, emb_a), (path_b, index_b, count_b, emb_b) = chosen
    similarity = cosine_similarity(emb_a, emb_b)
    model = emb_a.model
    same = is_same_person(similarity, model)
    if args.json:
        print(json.dumps({
            "a": {"image": path_a, "face": index_a, "faces_found": count_a},
            "b": {"image": path_b, "face": index_b, "faces_found": count_b},
            "model": model, "similarity": round(similarity, 4),
            "threshold": SAME_PERSON_THRESHOLDS[model], "same_person": same,
        }, indent=2))
    else:
        verdict = "same person" if same else "different people"
        print(f"{verdict}: similarity {similarity:.3f} ({model} recogniser, cosine; same person at "
              f">= {SAME_PERSON_THRESHOLDS[model]})")
    return EXIT_OK


def _pick(specific: int | None, both: int | None) -> int | None:
    return specific if specific is not None else both


# ---------------------------------------------------------------------------------------------------------
# generate and mix
# ---------------------------------------------------------------------------------------------------------

#: Output side when neither --width/--height nor a scene image gives one (the pipeline's default).
