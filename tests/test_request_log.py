"""The per-request line skips structlog's dispatch, not its pipeline: it is the line structlog
would write for the same event, labels and level filter included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import sys
import structlog
from appliance.logs import RequestLog, configure_logging
configure_logging(sys.argv[1])
structlog.contextvars.bind_contextvars(frontend=1)
fields = {"request_id": "r1", "model": "m", "status": 200, "duration_ms": 1.5, "shape": (1, 2)}
structlog.get_logger("t").info("infer", **fields)
RequestLog("t").info({**fields, "event": "infer"})
structlog.get_logger("t").warning("done")
"""


def run_logging(level: str) -> list[dict[str, object]]:
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, level],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_a_request_line_is_the_line_structlog_writes_for_the_same_event() -> None:
    through_structlog, request_line, _ = run_logging("info")
    assert request_line["timestamp"] != ""
    # The same keys in the same order, the same values but the time.
    assert list({**request_line, "timestamp": None}.items()) == list(
        {**through_structlog, "timestamp": None}.items()
    )
    assert request_line["frontend"] == 1 and request_line["level"] == "info"
    assert request_line["shape"] == [1, 2]


def test_request_lines_are_left_out_below_the_configured_level() -> None:
    lines = run_logging("warning")
    assert [line["event"] for line in lines] == ["done"]
