"""The events of a server's JSON log, for tests that check what it logged."""

from __future__ import annotations

import json
from typing import Any

from tests.support.server import ServerProcess


def log_events(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    """The log's entries for `event`, in order. Every line that starts with "{" must parse as
    JSON: a broken entry fails the test (tests.support.frontends.log_events skips them)."""
    entries = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                entries.append(entry)
    return entries
