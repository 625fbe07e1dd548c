"""The pins the roles install are the ones the app is tested with."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible/roles"


def test_the_cpu_runtime_installs_the_torch_of_constraints_txt() -> None:
    (pin,) = re.findall(r"(?m)^torch==\S+$", (REPO / "constraints.txt").read_text())
    defaults = yaml.safe_load((ROLES / "aegis_tpu_runtime/defaults/main.yml").read_text())
    assert defaults["aegis_tpu_runtime_cpu_requirements"] == [pin]


def test_host_sets_leave_torch_to_the_runtime_and_pin_every_line() -> None:
    sets = sorted((ROLES / "aegis_appliance/files/requirements").glob("py3.*.txt"))
    assert [s.name for s in sets] == ["py3.10.txt", "py3.11.txt", "py3.12.txt", "py3.13.txt"]
    for path in sets:
        lines = [line for line in path.read_text().splitlines() if re.match(r"[A-Za-z0-9]", line)]
        assert lines and all("==" in line for line in lines), path
        assert not [line for line in lines if re.match(r"torch\b", line)], path
