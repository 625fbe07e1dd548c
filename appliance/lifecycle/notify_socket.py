"""The receiving end of sd_notify, for the supervisor's children: a datagram socket per child
that says which process sent each message (SO_PASSCRED), so a dead predecessor's last words or a
stranger's are told apart from the child's own."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def notify_socket(path: Path) -> socket.socket:
    """A non-blocking datagram socket bound at `path`, to hand a child as its NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def read_messages(sock: socket.socket) -> Iterator[tuple[int | None, dict[str, str]]]:
    """Every message waiting on `sock`: its sender's pid (None when the kernel gave none) and
    its KEY=VALUE fields."""
    while True:
        try:
            data, ancillary, _flags, _address = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (BlockingIOError, InterruptedError):
            return
        fields = dict(
            line.partition("=")[::2] for line in data.decode(errors="replace").splitlines()
        )
        yield _sender_pid(ancillary), fields


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
            return int(pid)
    return None
