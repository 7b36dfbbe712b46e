"""Face analysis speed and memory: facestudio against the `face_recognition` package, in one run.

For every photo, facestudio detects (YuNet), aligns and embeds (dlib ResNet, PyTorch port and dlib's own
runtime) each face; the baseline is `face_recognition.face_locations` (dlib HOG, its default) followed by
`face_recognition.face_encodings` on the same decoded images. Times are medians over rounds after a warm-up,
divided by the number of faces found; the ratio facestudio / face_recognition is printed (target <= 1.0).
Peak memory is measured in a fresh process per pipeline: the peak resident set size, and how much the
pipeline's models and work added to the peak reached by imports and image decoding.

    pip install --no-deps face_recognition==1.3.0 "setuptools<81"   # the baseline; needs pkg_resources
    python benchmarks/faces.py [FOLDER] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
PIPELINES = ("facestudio (torch)", "facestudio (dlib runtime)", "face_recognition")


def load_photos(folder: Path) -> list[np.ndarray]:
    from facestudio.imaging import load_image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no photos in {folder}")
    return [np.asarray(load_image(p)) for p in paths]


def make_pipeline(name: str):
    """A function image -> number of faces embedded, with its models loaded and warm."""
    if name == "face_recognition":
        try:
            import face_recognition
        except ImportError as e:
            sys.exit(f"the baseline needs the face_recognition package ({e}):\n"
                     '  pip install --no-deps face_recognition==1.3.0 "setuptools<81"')

        def run(image):
            locations = face_recognition.face_locations(image)
            return len(face_recognition.face_encodings(image, locations))
        return run

    from facestudio.faces import DlibRecognizer, FaceAnalyzer

    analyzer = FaceAnalyzer(recognizer=DlibRecognizer(backend="torch" if "torch" in name else "dlib"))

    def run(image):
        return len(analyzer.embed_faces(image, analyzer.detect(image)))
    return run


def time_pipeline(run, photos, rounds: int) -> tuple[float, int]:
    """Median seconds for all photos, and the faces embedded per pass."""
    faces = sum(run(p) for p in photos)  # warm-up: loads models, fills caches
    totals = []
    for _ in range(rounds):
        start = time.perf_counter()
        for p in photos:
            run(p)
        totals.append(time.perf_counter() - start)
    return statistics.median(totals), faces


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is not inherited across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def _memory_child(name: str, folder: str, queue) -> None:
    photos = load_photos(Path(folder))
    run = make_pipeline(name)
    before = _peak_rss_mib()
    for p in photos:
        run(p)
    queue.put((before, _peak_rss_mib()))


def peak_memory(name: str, folder: Path) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_memory_child, args=(name, str(folder), queue))
    child.start()
    result = queue.get(timeout=600)
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    photos = load_photos(args.folder)
    print(f"{len(photos)} photos from {args.folder}; {args.rounds} rounds after a warm-up; "
          f"torch threads {torch.get_num_threads()}")
    results = {}
    for name in PIPELINES:
        seconds, faces = time_pipeline(make_pipeline(name), photos, args.rounds)
        results[name] = (seconds, faces)
    base_seconds, base_faces = results["face_recognition"]
    print(f"\n{'pipeline':<28}{'faces':>6}{'ms/image':>10}{'ms/face':>9}{'ratio':>7}"
          f"{'peak RSS MiB':>14}{'growth MiB':>12}")
    for name in PIPELINES:
        seconds, faces = results[name]
        before, peak = peak_memory(name, args.folder)
        per_face = seconds / max(faces, 1)
        ratio = per_face / (base_seconds / max(base_faces, 1))
        print(f"{name:<28}{faces:>6}{1000 * seconds / len(photos):>10.1f}{1000 * per_face:>9.1f}{ratio:>7.2f}"
              f"{peak:>14.0f}{peak - before:>12.0f}")
    print("\nratio = ms per face / face_recognition's ms per face (target <= 1.0)")


if __name__ == "__main__":
    main()
