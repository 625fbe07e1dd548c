"""systemd's notify socket, played by the test: what a server tells systemd, and when."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tests.support.server import ServerProcess


class NotifySocket(threading.Thread):
    """A datagram socket like systemd's; records each message with whether the server was ready."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.server: ServerProcess | None = None
        self.messages: list[tuple[str, int | None]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            ready = None
            if "READY=1" in data and self.server is not None:
                ready = self.server.status("/v2/health/ready")
            self.messages.append((data, ready))

    def close(self) -> None:
        self.done.set()
        self.join(5)
        self.sock.close()
