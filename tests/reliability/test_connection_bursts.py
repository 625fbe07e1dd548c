"""Bursts of connections do not make the server unreachable: connections the clients closed are
let go at once, idle keep-alive connections after a few seconds, and the descriptor limit a
service normally gets (soft 1024, as systemd gives) is raised to its hard limit at start."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

from appliance.lifecycle.server import KEEP_ALIVE_S
from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.server import ServerProcess, running_server

BURST = 1500
SOFT = 1024
REACHABLE_S = 10.0  # a probe's answer once the burst is open, on loaded shared cores
HEALTH = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"


def limit(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def open_fds(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def probe_s(server: ServerProcess, give_up_s: float) -> float:
    """Seconds until a new connection gets its health answer."""
    started = time.monotonic()
    while time.monotonic() - started < give_up_s:
        with contextlib.suppress(OSError):
            if call(server, "GET", "/v2/health/live", timeout_s=give_up_s).status == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    return float("inf")


def idle_burst(server: ServerProcess) -> list[socket.socket]:
    """BURST keep-alive connections, each having made one request, left open and idle."""
    sockets = []
    for _ in range(BURST):
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(HEALTH)
        sockets.append(sock)
    return sockets


def raise_own_limit(test_limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < test_limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(test_limit, hard), hard))


def test_a_burst_of_short_connections_past_the_soft_limit_is_served(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    """1,500 connections, one request each, closed by the client, one after another: Hypercorn
    keeps each for the keep-alive timeout, so they outnumber a soft limit of 1024."""
    raise_own_limit(BURST * 2 + 100)
    config = server_config(tmp_path, model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    with running_server(config, tmp_path, preexec_fn=limit(SOFT, SOFT * 8)) as server:
        started = time.monotonic()
        for _ in range(BURST):
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(HEALTH)
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        burst_s = time.monotonic() - started
        peak = open_fds(server)
        took = probe_s(server, 10)
        end = time.monotonic() + KEEP_ALIVE_S + 10
        while open_fds(server) > 100 and time.monotonic() < end:
            time.sleep(0.1)
        after = open_fds(server)
    print(
        f"\nFIGURES short burst: {BURST} connections in {burst_s:.1f} s, all 200; server fds "
        f"{peak} after, {after} a keep-alive timeout later; probe {took:.2f} s"
    )
    assert took < REACHABLE_S
    assert after <= 100, after


def test_a_burst_of_idle_connections_past_the_soft_limit_leaves_the_server_reachable(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    raise_own_limit(BURST * 2 + 100)
    config = server_config(tmp_path, model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    with running_server(config, tmp_path, preexec_fn=limit(SOFT, SOFT * 8)) as server:
        sockets = idle_burst(server)
        try:
            took = probe_s(server, 30)
            held = open_fds(server)
        finally:
            for sock in sockets:
                sock.close()
    print(
        f"\nFIGURES idle burst (soft {SOFT}, hard {SOFT * 8}): {held} descriptors open, "
        f"probe answered in {took:.2f} s"
    )
    assert held > BURST, held  # every connection accepted: the soft limit was raised
    assert took < REACHABLE_S, took


def test_at_a_hard_limit_idle_connections_are_closed_within_seconds(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    """The limit cannot be raised: the burst fills it, and the keep-alive timeout frees it."""
    raise_own_limit(BURST * 2 + 100)
    config = server_config(tmp_path, model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    with running_server(config, tmp_path, preexec_fn=limit(SOFT, SOFT)) as server:
        sockets = idle_burst(server)
        try:
            took = probe_s(server, 60)
            held = open_fds(server)
        finally:
            for sock in sockets:
                sock.close()
        log = server.log()
    print(f"\nFIGURES idle burst (hard {SOFT}): {held} descriptors, probe answered in {took:.2f} s")
    assert held <= SOFT, held
    assert took < KEEP_ALIVE_S + 10, took  # it was 75 s and more
    assert server.process.poll() is None or "start_failed" not in log
