"""`aegis sync --config PATH`: pull and verify every model's artifacts, then exit."""

from __future__ import annotations

import sys
from typing import TextIO

from appliance.config import AppConfig
from appliance.storage.errors import SyncError
from appliance.storage.progress import LogProgress, SyncProgress, TerminalProgress
from appliance.storage.sync import sync_all
from appliance.units import MiB


def run_sync_command(
    config: AppConfig, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Exit code 0 when every model is ready to load (a stale copy counts, with a warning), else 1.

    Progress goes to stderr: bars on a terminal, structlog lines otherwise (the journal under
    systemd). One summary line per model goes to stdout.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    progress: SyncProgress = TerminalProgress(err) if err.isatty() else LogProgress()
    try:
        results = sync_all(config, progress=progress)
    except SyncError as error:
        print(f"aegis sync: error: {error}", file=err)
        return 1
    for result in results:
        note = ""
        if result.stale:
            note = " [STALE: source unreachable, serving the last verified local copy]"
        print(
            f"{result.name} {result.version}: {result.path} "
            f"({result.downloaded_bytes / MiB:.1f} MiB downloaded){note}",
            file=out,
        )
    return 0
