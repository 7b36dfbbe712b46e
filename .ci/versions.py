"""Compare the installed packages with constraints.txt: print what differs, or (--write) rewrite the file.

torch is left out of the file: it is installed first, by its own command (the CPU build in CI), and a pin
here must never make pip replace a user's torch with another build.
"""

from __future__ import annotations

import sys
from importlib.metadata import distributions
from pathlib import Path

SKIP = {"facestudio", "torch", "pip", "setuptools", "wheel"}

HEADER = """\
# The exact versions the whole test suite last passed with (written by `bash .ci/run --update-constraints`).
# The README's commands install with `-c constraints.txt`; CI runs the suite on this set and on the newest
# versions pyproject.toml's ranges allow. torch is not here: install it first (`pip install torch==2.13.0`).
"""


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed() -> dict[str, str]:
    found = {canonical(d.metadata["Name"]): d.version for d in distributions()}
    return {name: found[name] for name in sorted(found) if name not in SKIP}


def pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return pins


def main(path: str, *flags: str) -> int:
    file, now = Path(path), installed()
    if "--write" in flags:
        file.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in now.items()))
        print(f"{file}: {len(now)} packages written")
        return 0
    pins = pinned(file)
    moved = [f"{n} {pins.get(n, '-')} -> {v}" for n, v in now.items() if pins.get(n) != v]
    print(f"versions against {file}: " + ("the same set" if not moved else f"{len(moved)} differ: " + ", ".join(moved)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
