"""Cached virtual environments for the peers and the bench tools, under `.cache/bench/venvs/`.

Each venv is rebuilt only when its pinned requirement list changes (a stamp file holds the list).
torch is pinned to the CPU wheel the dev environment uses, so pip takes it from local disk instead
of downloading a CUDA build.

    python bench/envs.py [NAME ...]     # install (or check) the named venvs, all by default
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / ".cache" / "bench" / "venvs"
TORCH = "torch==2.13.0"

REQUIREMENTS: dict[str, tuple[str, ...]] = {
    # TorchServe's worker imports yaml; the archiver builds the .mar it loads.
    "torchserve": ("torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml", TORCH),
    # uvloop 0.22 breaks MLServer 1.7.1's event loop setup.
    "mlserver": ("mlserver==1.7.1", "uvloop<0.22", TORCH),
    "litserve": ("litserve==0.2.19", TORCH),
    # Plotting and profiling stay out of the serving venv.
    "tools": ("matplotlib", "py-spy", "pyinstrument"),
}


def python_of(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure(name: str, quiet: bool = True) -> Path:
    """The venv's python, installing the venv first when missing or stale."""
    wanted = "\n".join(REQUIREMENTS[name]) + "\n"
    home = VENVS / name
    stamp = home / ".bench-requirements"
    if stamp.exists() and stamp.read_text() == wanted:
        return python_of(name)
    print(f"bench: installing the {name} venv into {home}", file=sys.stderr, flush=True)
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    pip = [str(python_of(name)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    subprocess.run([*pip, *REQUIREMENTS[name]], check=True)
    stamp.write_text(wanted)
    return python_of(name)


def main(names: list[str]) -> int:
    for name in names or list(REQUIREMENTS):
        print(name, ensure(name, quiet=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
