"""The aegis_appliance role's host-side tools, run as the role runs them: scripts on a Python."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

FILES = Path(__file__).resolve().parents[2] / "ansible/roles/aegis_appliance/files"
GATE = FILES / "aegis_gate.py"
ROLLOUT = FILES / "aegis_rollout.py"


def run_tool(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool with the interpreter running the tests (hosts run it with theirs: >= 3.10)."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def load_tool(script: Path) -> ModuleType:
    """A tool as a module, for its functions."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module
    spec.loader.exec_module(module)
    return module
