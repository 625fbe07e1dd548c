"""Closing the listening sockets without resetting a connection the kernel has already accepted.

Closing a listener resets every connection in its accept queue (the kernel completed their
handshakes; the clients may have sent whole requests) and every half-open one. So a stop first
makes the kernel ignore new SYNs (a socket filter that drops TCP segments without ACK: a client
retries its SYN a second later and then meets the closed port, which it sees as refused), then
lets the server accept what is queued until the accept queue and the half-open handshakes are
empty and have stayed so for a moment (each accepted connection reads its request), and only then
lets Hypercorn close the listener.

Linux only (SO_ATTACH_FILTER, TCP_INFO, /proc/net/tcp); elsewhere the listener closes as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
from pathlib import Path

import structlog
from hypercorn.config import Config as HypercornConfig

log = structlog.get_logger("aegis.lifecycle")

_SO_ATTACH_FILTER = 26
# Classic BPF over the TCP header: load the flags byte; ACK set -> keep the segment, else drop.
_NO_NEW_HANDSHAKES = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x45, 0, 1, 0x10),  # jset #ACK, keep, drop
    (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1
    (0x06, 0, 0, 0),  # drop: ret #0
)
# struct tcp_info: tcpi_unacked, which for a listener is the length of its accept queue.
_ACCEPT_QUEUE_OFFSET = 24
_TCP_INFO_SIZE = 104
_SYN_RECV = "03"  # /proc/net/tcp's state of a half-open connection
# How long the queue must stay empty: the event loop runs each accepted connection to its first
# read within a few iterations of this.
QUIET_S = 0.05
POLL_S = 0.005


def _filter_program() -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    code = ctypes.create_string_buffer(
        b"".join(struct.pack("HBBI", *op) for op in _NO_NEW_HANDSHAKES)
    )
    # struct sock_fprog: the number of instructions and a pointer to them (the buffer, kept alive
    # by the caller until the kernel has copied it).
    return struct.pack("HP", len(_NO_NEW_HANDSHAKES), ctypes.addressof(code)), code


def _accept_queue(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    queued: int = struct.unpack_from("I", info, _ACCEPT_QUEUE_OFFSET)[0]
    return queued


def _half_open(ports: set[int]) -> int:
    """Connections in SYN_RECV on `ports`: handshakes the filter lets finish."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == _SYN_RECV and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    count += 1
    return count


def _pending(sockets: list[socket.socket], ports: set[int]) -> int:
    return sum(_accept_queue(sock) for sock in sockets) + _half_open(ports)


def own_listeners(hyper: HypercornConfig) -> list[int]:
    """Bind the listening sockets here, as Hypercorn would, and hand them to it as `fd://N`, so
    that a stop can reach them; their descriptors. None for sockets passed in (`fd://`): a
    supervisor's, shared with other replicas that go on accepting from them."""
    if any(bind.startswith("fd://") for bind in hyper.bind):
        return []
    made = hyper.create_sockets()
    fds = [sock.detach() for sock in made.secure_sockets + made.insecure_sockets]
    hyper.bind = [f"fd://{fd}" for fd in fds]
    return fds


async def empty_before_closing(fds: list[int], budget_s: float) -> None:
    """Stop new handshakes on the listening sockets `fds` and wait, at most `budget_s`, until
    every connection already accepted by the kernel has been taken by the server."""
    every = [socket.socket(fileno=fd) for fd in fds]
    sockets = [sock for sock in every if sock.family in (socket.AF_INET, socket.AF_INET6)]
    loop = asyncio.get_running_loop()
    end = loop.time() + budget_s
    try:
        program, _code = _filter_program()
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
        ports = {sock.getsockname()[1] for sock in sockets}
        quiet_since = loop.time()
        while loop.time() < end:
            if _pending(sockets, ports):
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= QUIET_S:
                return
            await asyncio.sleep(POLL_S)
        log.warning("listener_drain_timeout", budget_s=budget_s)
    except OSError as error:  # not Linux: the listeners close as they always did
        log.warning("listener_drain_unavailable", reason=str(error))
    finally:
        for sock in every:
            sock.detach()  # the descriptors stay Hypercorn's
