"""Log lines carry their syslog priority when, and only when, stderr is the journal's stream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

SCRIPT = """
import structlog
from appliance.logs import configure_logging
configure_logging("debug")
log = structlog.get_logger("t")
log.info("served")
log.warning("slow")
log.error("failed")
from appliance.logs import RequestLog
RequestLog("t").info({"event": "answered"})
"""


def run_logging(journal: bool) -> list[str]:
    """Run SCRIPT with stderr on a stream socket, as systemd connects it to journald."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    if journal:
        info = os.fstat(theirs.fileno())
        env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    with ours, theirs:
        process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT], stderr=theirs.fileno(), env=env, close_fds=True
        )
        theirs.close()
        ours.settimeout(60)
        received = b""
        while chunk := ours.recv(65536):
            received += chunk
        assert process.wait(60) == 0
    return received.decode().splitlines()


def test_lines_to_the_journal_start_with_their_priority() -> None:
    lines = run_logging(journal=True)
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<6>", "<4>", "<3>", "<6>"], lines
    assert all(line[3:].startswith("{") for line in lines), lines


def test_lines_elsewhere_are_plain_json() -> None:
    lines = run_logging(journal=False)
    assert len(lines) == 4 and all(line.startswith("{") for line in lines), lines
