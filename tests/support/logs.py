"""The events of a server's JSON log, for tests that check what it logged.

The server writes one JSON object per line, native output included (tests/reliability/
test_log_stream.py holds it to that), so a line that does not parse is a bug the test reports,
never one it skips. Only a last line without its newline is passed over: the server is still
writing it, and a test that polls a running server's log reads it whole on its next look.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.server import ServerProcess


def log_events(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    """The log's entries for `event`, in order; a complete line that is not a JSON object fails
    the test, naming the line."""
    # Split on "\n" alone: str.splitlines also splits on U+2028 and U+0085, which a JSON string
    # may hold unescaped.
    *complete, _being_written = server.log().split("\n")
    entries = []
    for line in complete:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise AssertionError(
                f"{server.log_path}: a log line is not JSON ({error}): {line!r}"
            ) from None
        assert isinstance(entry, dict), f"{server.log_path}: a log line is not an object: {line!r}"
        if entry.get("event") == event:
            entries.append(entry)
    return entries
