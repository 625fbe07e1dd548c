"""SIGTERM at a chosen moment of a real server's start, and how the process ended."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import start_server

# What the contract allows past shutdown_grace_s for the process to be gone.
EXIT_MARGIN_S = 1.0


@dataclass(frozen=True)
class Stopped:
    code: int
    seconds: float  # from SIGTERM to the process's exit
    log: str


def sigterm_when_logged(
    config_text: str,
    workdir: Path,
    event: str,
    grace_s: float,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    wait_s: float = 300.0,
) -> Stopped:
    """Start the server, send SIGTERM as soon as its log holds the event `event`, time the exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "aegis.toml"
    config_path.write_text(config_text)
    server = start_server(config_path, workdir / "server.log", env, python)
    marker = f'"event":"{event}"'
    try:
        end = time.monotonic() + wait_s
        while marker not in server.log():
            assert server.process.poll() is None, f"exited before {event}:\n{server.log()}"
            assert time.monotonic() < end, f"no {event} in {wait_s} s:\n{server.log()}"
            time.sleep(0.01)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(grace_s + 30)
        except subprocess.TimeoutExpired:
            code = -9
        seconds = time.monotonic() - signalled
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
    return Stopped(code, seconds, server.log())


def assert_stopped_in_time(stopped: Stopped, grace_s: float) -> None:
    assert "Traceback" not in stopped.log, stopped.log[-6000:]
    assert stopped.code == 0, stopped.log[-6000:]
    assert stopped.seconds <= grace_s + EXIT_MARGIN_S, (stopped.seconds, stopped.log[-6000:])
