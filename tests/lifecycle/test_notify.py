"""SystemdNotifier against a real unix datagram socket, as systemd's NOTIFY_SOCKET would be."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import structlog

from appliance.lifecycle.notify import SystemdNotifier

pytestmark = pytest.mark.timeout(30)


class Listener:
    """A bound datagram socket collecting (arrival time, message) in a thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, count: int, timeout_s: float = 2.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [message for _, message in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # A short folder: unix socket paths are limited to 107 bytes.
    folder = tempfile.mkdtemp(prefix="sd", dir="/tmp")
    path = os.path.join(folder, "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    server = Listener(path)
    yield server
    server.close()
    shutil.rmtree(folder)


def test_status_ready_and_stopping(listener: Listener) -> None:
    notifier = SystemdNotifier.from_environment()
    notifier.status("syncing heavy_model")
    notifier.ready("serving 1 model version(s)")
    notifier.stopping()
    assert listener.wait_for(3) == [
        "STATUS=syncing heavy_model",
        "READY=1\nSTATUS=serving 1 model version(s)",
        "STOPPING=1",
    ]


def test_status_text_stays_one_assignment(listener: Listener) -> None:
    SystemdNotifier.from_environment().status("load failed:\nREADY=1")
    assert listener.wait_for(1) == ["STATUS=load failed: READY=1"]


def test_reloading_carries_the_monotonic_clock(listener: Listener) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    SystemdNotifier.from_environment().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = listener.wait_for(1)
    first, second = message.split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aegis-test-{uuid.uuid4().hex}"
    server = Listener("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        SystemdNotifier.from_environment().ready()
        assert server.wait_for(1) == ["READY=1"]
    finally:
        server.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = SystemdNotifier.from_environment()
    assert not notifier.enabled
    notifier.status("x")
    notifier.ready()
    notifier.reloading()
    notifier.stopping()
    assert notifier.watchdog_interval() is None
    asyncio.run(asyncio.wait_for(notifier.run_watchdog(), 1.0))  # returns at once


def test_watchdog_interval_is_half_the_period_and_only_for_this_process(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert SystemdNotifier.from_environment().watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert SystemdNotifier.from_environment().watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert SystemdNotifier.from_environment().watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert SystemdNotifier.from_environment().watchdog_interval() is None


def test_watchdog_pings_stop_while_the_event_loop_is_stuck(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    notifier = SystemdNotifier.from_environment()
    stuck: list[float] = []

    async def scenario() -> None:
        task = asyncio.create_task(notifier.run_watchdog())
        await asyncio.sleep(0.3)
        stuck.append(time.monotonic())
        time.sleep(0.5)  # blocks the loop, as a runaway handler would
        stuck.append(time.monotonic())
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(scenario())
    pings = [(at, message) for at, message in listener.messages]
    assert {message for _, message in pings} == {"WATCHDOG=1"}
    before = [at for at, _ in pings if at < stuck[0]]
    during = [at for at, _ in pings if stuck[0] + 0.01 < at < stuck[1]]
    after = [at for at, _ in pings if at > stuck[1]]
    assert len(before) >= 4 and during == [] and len(after) >= 4


def test_send_errors_are_logged_once_and_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/aegis/notify")
    notifier = SystemdNotifier.from_environment()
    with structlog.testing.capture_logs() as logs:
        notifier.status("one")
        notifier.ready()
        notifier.stopping()
    failures = [e for e in logs if e["event"] == "systemd_notify_failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == "warning"
