"""The `aegis` command, run as a user runs it, and the `[[models]]` table `aegis inspect` prints."""

from __future__ import annotations

import subprocess
import sys

_TABLE_HEADER = "# A [[models]] table for it"


def aegis(*args: str) -> subprocess.CompletedProcess[str]:
    """`aegis ARGS` in a process of this Python: its exit code and output, a failure included."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def printed_table(report: str) -> str:
    """The `[[models]]` table of an `aegis inspect` report, as a user would paste it."""
    return report.split(_TABLE_HEADER, 1)[1].split("\n", 1)[1]
