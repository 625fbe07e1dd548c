"""Download progress: bars on a terminal, periodic log lines elsewhere (systemd, CI).

Methods are called from download threads; both reporters take a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import structlog

from appliance.units import MiB


class SyncProgress:
    """Receives progress of one model version at a time; this base reports nothing."""

    def begin(self, model: str, version: str, objects: Sequence[tuple[str, int]]) -> None:
        """A download of `objects` (name, size) starts."""

    def advance(self, name: str, nbytes: int) -> None:
        """`nbytes` of object `name` arrived (negative when a retried range starts over)."""

    def object_done(self, name: str) -> None:
        """Object `name` is downloaded and verified."""

    def end(self, downloaded: int, failed: bool = False) -> None:
        """The version's sync ended: finished, or `failed` (its download is discarded)."""


@dataclass
class _Counter:
    size: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self, now: float) -> float:
        return self.done / max(now - self.started, 1e-3)

    def eta(self, now: float) -> str:
        rate = self.rate(now)
        if rate <= 0:
            return "--"
        return _duration((self.size - self.done) / rate)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class _Tracker(SyncProgress):
    """Keeps the counts; subclasses decide when and how to show them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._label = ""
        self._total = _Counter(0)
        self._objects: dict[str, _Counter] = {}
        self._active: dict[str, _Counter] = {}
        self._finished = 0

    def begin(self, model: str, version: str, objects: Sequence[tuple[str, int]]) -> None:
        with self._lock:
            self._label = f"{model}/{version}"
            self._objects = {name: _Counter(size) for name, size in objects}
            self._total = _Counter(sum(size for _, size in objects))
            self._active = {}
            self._finished = 0
            self._show(final=False)

    def advance(self, name: str, nbytes: int) -> None:
        with self._lock:
            counter = self._objects.get(name)
            if counter is None:
                return
            if name not in self._active:
                counter.started = time.monotonic()
                self._active[name] = counter
            counter.done += nbytes
            self._total.done += nbytes
            self._show(final=False)

    def object_done(self, name: str) -> None:
        with self._lock:
            self._active.pop(name, None)
            self._finished += 1

    def end(self, downloaded: int, failed: bool = False) -> None:
        with self._lock:
            self._show(final=True, failed=failed)

    def _show(self, final: bool, failed: bool = False) -> None:
        raise NotImplementedError


class TerminalProgress(_Tracker):
    """A line per object in flight and a total line, redrawn in place at most 10 times a second."""

    def __init__(self, stream: TextIO, width: int = 100) -> None:
        super().__init__()
        self._stream = stream
        self._width = width
        self._drawn = 0
        self._last = 0.0

    def _line(self, name: str, counter: _Counter, now: float) -> str:
        percent = 100 * counter.done / counter.size if counter.size else 100.0
        figures = (
            f"{counter.done / MiB:8.1f}/{counter.size / MiB:.1f} MiB {percent:3.0f}% "
            f"{counter.rate(now) / MiB:7.1f} MiB/s ETA {counter.eta(now)}"
        )
        room = self._width - len(figures) - 2
        if len(name) > room:
            name = "..." + name[-(room - 3) :]
        return f"{name:<{room}}  {figures}"

    def _show(self, final: bool, failed: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        lines = [] if final else [self._line(n, c, now) for n, c in list(self._active.items())[:8]]
        total = self._line(f"{self._label} total", self._total, now)
        summary = f" ({self._finished}/{len(self._objects)} objects)"
        if failed:
            summary += " FAILED"
        lines.append(total + summary)
        # Move up over the previous drawing, then overwrite it line by line.
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        body = "".join(f"\x1b[2K{line}\n" for line in lines)
        clear = "\x1b[J"
        self._stream.write(up + body + clear)
        self._stream.flush()
        self._drawn = 0 if final else len(lines)


class LogProgress(_Tracker):
    """A structlog line every `interval_s` seconds, and one at the start and end of each version."""

    def __init__(self, interval_s: float = 5.0) -> None:
        super().__init__()
        self._log = structlog.get_logger("aegis.storage")
        self._interval_s = interval_s
        self._last = 0.0

    def _show(self, final: bool, failed: bool = False) -> None:
        now = time.monotonic()
        first = self._total.done == 0 and not final
        if not (first or final or now - self._last >= self._interval_s):
            return
        self._last = now
        self._log.info(
            "sync_progress",
            model=self._label,
            bytes=self._total.done,
            total_bytes=self._total.size,
            objects_done=self._finished,
            objects=len(self._objects),
            rate_mib_s=round(self._total.rate(now) / MiB, 1),
            eta=self._total.eta(now),
            # A failed sync ends, but does not finish: its partial download is discarded.
            finished=final and not failed,
            failed=failed,
        )
