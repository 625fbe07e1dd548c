"""Structured logs: one JSON object per line on stderr (the journal, under systemd).

The processor pipeline is short on purpose: the per-request line is on the hot path. Python
warnings (numpy's among them) go through the same pipeline, and for the serving commands so does
whatever native code writes to the process's stdout and stderr (torch's C++ warnings,
onnxruntime's and XLA's own logging): every line on the stream is a JSON object.

Lines written on a serving process's event loop (the access lines among them) are flushed once
per turn of the loop, the rest at once (`LineWriter`).

When the stream is the journal, each line starts with its syslog priority (`<6>` for info,
sd-daemon(3)): journald files it at that level and rate-limits each level apart, so a flood of
per-request info lines cannot push a warning or an error out.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# Terminal colour codes (onnxruntime colours its warnings even when writing to a pipe).
_COLOUR = re.compile(rb"\x1b\[[0-9;]*m")
# How long exit waits for the relay to pass on the last lines native code wrote.
_RELAY_JOIN_S = 1.0
# Python's level names as structlog writes them, and their syslog priorities.
_PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
    "notset": 7,
}
# The level of a JSON line passed on as it is (a replica's).
_LEVEL = re.compile(rb'"level":"(\w+)"')
Renderer = Callable[[Any, str, MutableMapping[str, Any]], str]


# The processors' signature, as structlog calls them.
EventDict = MutableMapping[str, Any]


class LineWriter:
    """Writes log lines to a stream; those of the event loop's thread are flushed after its turn.

    A serving process writes an access line per request, and a flush per line is a write(2) per
    request: 3,000 a second on a busy core. Lines written on the thread of the loop given to
    `flush_after_each_turn` are flushed together once that turn of the loop ends (the callback
    runs before the loop waits for I/O again), so they leave within the turn that wrote them.
    Lines at warning level and above, lines of any other thread (a model thread, the native output
    relay) and every line while no loop runs are flushed at once, and `finish_output` flushes what
    is left before the process exits.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._flush_scheduled = False

    def flush_after_each_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Defer the flushes of lines written on this thread, which runs `loop`."""
        with self._lock:
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._flush_scheduled = False

    def write(self, line: str, urgent: bool) -> None:
        with self._lock:
            self.stream.write(line)
            loop = self._loop
            if (
                not urgent
                and loop is not None
                and threading.get_ident() == self._loop_thread
                and loop.is_running()
            ):
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self.flush)
                return
            self.stream.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            self.stream.flush()


class _LineLogger:
    """structlog's logger: each rendered event is one line for the `LineWriter`."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def info(self, message: str) -> None:
        self._writer.write(message + "\n", urgent=False)

    debug = info

    def warning(self, message: str) -> None:
        self._writer.write(message + "\n", urgent=True)

    warn = error = critical = exception = fatal = msg = warning


_writer: LineWriter | None = None
# The processors `configure_logging` gave structlog, and whether its level lets info lines
# through: `RequestLog` runs the same.
_processors: list[Any] = []
_info_enabled = False


class RequestLog:
    """The per-request line (the access line): the processors and the writer of every other
    line, without structlog's dispatch.

    structlog's call (its lazy proxy, the bound context's copy, the keywords unpacked and packed
    again, the result's type checked) is about 2 us of a 4 us line here, at every request.
    Before `configure_logging`, the line goes through structlog, to whatever it is set up with.
    """

    def __init__(self, name: str) -> None:
        self._structlog = structlog.get_logger(name)

    def info(self, event: dict[str, Any]) -> None:
        """Write `event` (its "event" key the line's name) at info level; `event` is consumed."""
        writer = _writer
        if writer is None:
            self._structlog.info(**event)
            return
        if not _info_enabled:
            return
        line: Any = event
        for processor in _processors:
            line = processor(None, "info", line)
        writer.write(line + "\n", urgent=False)


def flush_after_each_turn(loop: asyncio.AbstractEventLoop) -> None:
    """Flush the lines this thread logs once per turn of `loop` (see `LineWriter`)."""
    if _writer is not None:
        _writer.flush_after_each_turn(loop)


# The second the last timestamp fell in, and its text up to the seconds: one tuple, so that a
# thread reads the pair that belong together.
_stamped_second: tuple[int, str] = (-1, "")


def add_timestamp(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """ISO 8601 UTC to the microsecond, as `2026-12-07T15:08:22.988400Z`.

    structlog's TimeStamper builds a datetime and formats all of it for every line (about 2 us,
    a third of an access line); the text up to the seconds changes once a second.
    """
    global _stamped_second
    now = time.time()
    second = int(now)
    stamped, prefix = _stamped_second
    if stamped != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamped_second = (second, prefix)
    event["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
    return event


def _render(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


def _render_for_journal(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    priority = _PRIORITIES.get(str(event.get("level", "info")), 6)
    return f"<{priority}>" + orjson.dumps(event, default=str).decode()


def writes_to_journal(stream: TextIO) -> bool:
    """True when `stream` is the journal's stream socket (systemd sets JOURNAL_STREAM=dev:inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog, the standard library (Hypercorn, google-cloud) and warnings to JSON."""
    global _writer, _processors, _info_enabled
    numeric = logging.getLevelName(level.upper())
    output = stream or sys.stderr
    render: Renderer = _render_for_journal if writes_to_journal(output) else _render
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_timestamp,
    ]
    writer = _writer = LineWriter(output)
    _processors = [*shared, structlog.processors.format_exc_info, render]
    _info_enabled = numeric <= logging.INFO
    structlog.configure(
        processors=_processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_names: _LineLogger(writer),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                render,
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
    # Block-buffered: the `LineWriter` decides when lines are flushed.
    output = os.fdopen(os.dup(2), "w", buffering=1 << 16, encoding="utf-8", errors="replace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    relay = threading.Thread(
        target=_relay,
        args=(read_end, output, writes_to_journal(output)),
        name="aegis-native-output",
        daemon=True,
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
        output.flush()

    global _restore, _output
    _restore = restore
    _output = output
    atexit.register(finish_output)
    return output


_restore: Callable[[], None] | None = None
_output: TextIO | None = None


def output_descriptor() -> int | None:
    """Where this process's log lines go once `capture_native_output` took descriptors 1 and 2
    (None before): child processes that log for themselves are given it, so their lines are not
    relayed through this process's pipe, one read and one write each."""
    return _output.fileno() if _output is not None else None


def finish_output() -> None:
    """Pass on every line written so far, before an exit that skips atexit (os._exit): once."""
    global _restore
    restore, _restore = _restore, None
    if restore is not None:
        restore()
    if _writer is not None:
        _writer.flush()
    sys.stdout.flush()
    sys.stderr.flush()


def _relay(read_end: int, output: TextIO, journal: bool) -> None:
    native = structlog.get_logger("aegis.native")
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _relay_line(native, line, output, journal)
    _relay_line(native, pending, output, journal)
    os.close(read_end)


def _relay_line(native: Any, line: bytes, output: TextIO, journal: bool) -> None:
    raw = line.strip()
    if raw.startswith(b"{") and raw.endswith(b"}"):
        # Already a JSON line: a child process's log (a replica writes to the descriptors it
        # inherited), passed on as it is.
        prefix = ""
        if journal:
            level = _LEVEL.search(raw)
            name = level.group(1).decode() if level else "info"
            prefix = f"<{_PRIORITIES.get(name, 6)}>"
        text = prefix + raw.decode("utf-8", "replace") + "\n"
        writer = _writer
        if writer is not None and writer.stream is output:
            writer.write(text, urgent=True)
        else:  # before logging is configured
            output.write(text)
            output.flush()
        return
    message = _COLOUR.sub(b"", raw).decode("utf-8", "replace").strip()
    if message:
        native.warning(message, stream="native")
