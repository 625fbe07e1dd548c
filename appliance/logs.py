"""Structured logs: one JSON object per line on stderr (the journal, under systemd).

The processor pipeline is short on purpose: the per-request line is on the hot path. Python
warnings (numpy's among them) go through the same pipeline, and for the serving commands so does
whatever native code writes to the process's stdout and stderr (torch's C++ warnings,
onnxruntime's and XLA's own logging): every line on the stream is a JSON object.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# Terminal colour codes (onnxruntime colours its warnings even when writing to a pipe).
_COLOUR = re.compile(rb"\x1b\[[0-9;]*m")
# How long exit waits for the relay to pass on the last lines native code wrote.
_RELAY_JOIN_S = 1.0


def _render(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog, the standard library (Hypercorn, google-cloud) and warnings to JSON."""
    numeric = logging.getLevelName(level.upper())
    output = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _render,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # warnings.warn (numpy's RuntimeWarnings, torch's UserWarnings) to the "py.warnings" logger.
    logging.captureWarnings(True)


def capture_native_output() -> TextIO:
    """Send what is written to file descriptors 1 and 2 through the log pipeline, line by line;
    returns the stream the JSON lines themselves are to be written to (the original stderr).

    Native libraries write to the descriptors directly, past Python's sys.stderr, so the only
    place to catch their lines is the descriptors: they become a pipe that a thread reads.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    output = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    relay = threading.Thread(
        target=_relay, args=(read_end, output), name="aegis-native-output", daemon=True
    )
    relay.start()

    def restore() -> None:
        # Point 1 and 2 back at the real stream: the pipe's last writer is gone, the relay reads
        # what is left, sees the end, and stops.
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        relay.join(_RELAY_JOIN_S)

    atexit.register(restore)
    return output


def _relay(read_end: int, output: TextIO) -> None:
    native = structlog.get_logger("aegis.native")
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _relay_line(native, line, output)
    _relay_line(native, pending, output)
    os.close(read_end)


def _relay_line(native: Any, line: bytes, output: TextIO) -> None:
    raw = line.strip()
    if raw.startswith(b"{") and raw.endswith(b"}"):
        # Already a JSON line: a child process's log (a replica writes to the descriptors it
        # inherited), passed on as it is.
        output.write(raw.decode("utf-8", "replace") + "\n")
        return
    text = _COLOUR.sub(b"", raw).decode("utf-8", "replace").strip()
    if text:
        native.warning(text, stream="native")
