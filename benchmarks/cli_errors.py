"""Time from `facestudio ...` to its error message for mistakes a user makes on the first day (target < 2 s).

Each case runs the real command in a fresh process (the time a user waits: interpreter start, imports,
checks) until it exits with the one-line error; the median over rounds is printed with the message. For
scale, the same run times `import torch, diffusers, transformers`, which the checks must not wait for.

    python benchmarks/cli_errors.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "examples" / "obama.jpg")
CASES = {
    "generate --width 65": ["generate", "--prompt", "x", "--base-model", "tiny", "--width", "65"],
    "generate, a missing photo": ["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny",
                                  "--identity", "missing.jpg"],
    "generate --preset, a missing photo": ["generate", "--preset", "faceid-plusv2-sd15", "--prompt", "x",
                                           "--identity", "missing.jpg"],
    "generate, a missing --style image": ["generate", "--prompt", "x", "--base-model", "tiny", "--adapter", "tiny",
                                          "--style-adapter", "tiny", "--identity", PHOTO, "--style", "missing.png"],
    "mix, a missing photo": ["mix", PHOTO, "missing.jpg", "--base-model", "tiny", "--adapter", "tiny"],
    "serve --port 70000": ["serve", "--base-model", "tiny", "--port", "70000"],
}


def time_case(argv: list[str], env: dict) -> tuple[float, int, str]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "facestudio.cli", *argv], env=env, capture_output=True, text=True)
    return time.perf_counter() - start, run.returncode, run.stderr.strip().splitlines()[-1] if run.stderr else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    print(f"{'case':<38} {'median s':>8} {'max s':>6}  exit  message")
    for name, argv in CASES.items():
        runs = [time_case(argv, env) for _ in range(args.rounds)]
        times = [t for t, _, _ in runs]
        _, code, message = runs[-1]
        print(f"{name:<38} {statistics.median(times):8.2f} {max(times):6.2f}  {code:4d}  {message[:90]}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers"], env=env, check=True)
    print(f"{'(for scale: import torch, diffusers, transformers)':<38} {time.perf_counter() - start:8.2f}")


if __name__ == "__main__":
    main()
