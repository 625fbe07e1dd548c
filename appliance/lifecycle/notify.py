"""The systemd notify protocol (sd_notify), spoken directly over the datagram socket.

systemd passes NOTIFY_SOCKET (a path, or '@name' for an abstract socket) to a Type=notify service;
each datagram is newline-separated KEY=VALUE lines. Without NOTIFY_SOCKET every call is a no-op, so
the same code runs under systemd, in a container and in tests. A failed send is logged once and
never raised: losing a status line must not take the server down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

log = structlog.get_logger("aegis.lifecycle")


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """`address` as in NOTIFY_SOCKET (None: a no-op notifier); `watchdog_usec` its period."""
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._watchdog_usec = watchdog_usec
        self._failed = False

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        address = os.environ.get("NOTIFY_SOCKET") or None
        return cls(address, _watchdog_usec_from_environment())

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def ready(self, status: str | None = None) -> None:
        """READY=1: systemd's start (or reload) job completes; `systemctl start` returns."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        self._send("\n".join(lines))

    def reloading(self) -> None:
        """RELOADING=1; send ready() when the reload is done. systemd >= 253 (Type=notify-reload)
        wants the CLOCK_MONOTONIC time of the request alongside, to tell reloads apart."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked for."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self) -> None:
        """Ping from the event loop itself: if the loop is stuck, the pings stop and systemd
        restarts the service, which is the point. Returns at once when no watchdog is set."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            # A socket per message, as libsystemd's sd_notify does: messages are a few a
            # second at most, and nothing is left open for the process to close.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                log.warning("systemd_notify_failed", socket=self._address, error=str(error))


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return " ".join(text.splitlines())


def _watchdog_usec_from_environment() -> int | None:
    raw = os.environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("systemd_watchdog_ignored", reason=f"WATCHDOG_USEC={raw!r} is not an integer")
        return None
    return usec if usec > 0 else None
