"""A small HTTP proxy in front of a storage emulator (fake-gcs-server, moto) that can answer
errors, slow responses down, hold them back or flip bytes of what it forwards.

The proxy is a fault injector between the real client and the emulator, not a stand-in for either.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

STOP_TIMEOUT_S = 5.0

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultyProxy:
    """Forwards HTTP to `upstream`; answers `status` to the next `fail_next` requests instead;
    when `chunk_delay_s` is set, sleeps between 64 KiB chunks of each response body; when
    `corrupt_bodies` is set, flips the bits of the first byte of every successful ranged GET's body
    (object reads; listings are left alone), as bit rot in the store would: the store's own
    metadata still describes the good bytes."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.fail_next = 0
        self.status = 503
        self.chunk_delay_s = 0.0
        self.corrupt_bodies = False
        self.answering = threading.Event()
        self.answering.set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.answering.set()  # no handler is left waiting
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.answering.wait()
                with proxy._lock:
                    proxy.requests.append((self.command, self.path, self.headers.get("Range")))
                length: int | str | None  # later the upstream's Content-Length header, as it came
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._take_failure():
                    payload = b'{"error": {"code": %d, "message": "injected"}}' % proxy.status
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    # A HEAD answer has no body: bytes written after it would be read as the
                    # next answer on the client's kept-alive connection.
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        length = response.getheader("Content-Length")
                        self.send_header("Content-Length", length or "0")
                        self.end_headers()
                        return
                    ranged = self.command == "GET" and self.headers.get("Range") is not None
                    corrupt = proxy.corrupt_bodies and ranged and response.status in (200, 206)
                    if response.getheader("Content-Length") is None:
                        data = response.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(_flip_first(data) if corrupt else data)
                        return
                    # Not None: checked above.
                    self.send_header(
                        "Content-Length", cast(str, response.getheader("Content-Length"))
                    )
                    self.end_headers()
                    while chunk := response.read(64 * 1024):
                        self.wfile.write(_flip_first(chunk) if corrupt else chunk)
                        corrupt = False
                        if proxy.chunk_delay_s:
                            time.sleep(proxy.chunk_delay_s)
                finally:
                    upstream.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler


def _flip_first(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:] if data else data
