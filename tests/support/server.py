"""Starting the real server (`python -m appliance serve`, Hypercorn on loopback) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.http import call, free_port


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    grpc_port: int | None = None

    @property
    def grpc_address(self) -> str:
        """host:port of the gRPC service, as tritonclient.grpc wants it."""
        assert self.grpc_port is not None, "this server was started without gRPC"
        return f"{self.host}:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as tritonclient wants it."""
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 5.0) -> str:
        """The log once it holds `text`: lines written after the reply (access log) lag it."""
        end = time.monotonic() + timeout_s
        while text not in (log := self.log()) and time.monotonic() < end:
            time.sleep(0.05)
        return log

    def status(self, path: str) -> int:
        return call(self, "GET", path, timeout_s=5).status

    def wait_ready(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.status("/v2/health/ready") == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode


def start_server(
    config_path: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    preexec_fn: Callable[[], None] | None = None,
    grpc: bool = True,
    port: int | None = None,
    grpc_port: int | None = None,
) -> ServerProcess:
    """The server on a free loopback port, with gRPC on another (never the default 0.0.0.0:8081,
    which would not be loopback and would clash between servers); `grpc=False` leaves the
    config's grpc_bind alone."""
    port = port or free_port()
    grpc_port = (grpc_port or free_port()) if grpc else None
    grpc_args = [] if grpc_port is None else ["--grpc-bind", f"127.0.0.1:{grpc_port}"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "appliance",
                "serve",
                "--config",
                str(config_path),
                "--bind",
                f"127.0.0.1:{port}",
                *grpc_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    return ServerProcess(process, "127.0.0.1", port, log_path, grpc_port)


@contextlib.contextmanager
def running_server(
    config_text: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
    python: str = sys.executable,
    preexec_fn: Callable[[], None] | None = None,
    port: int | None = None,
) -> Iterator[ServerProcess]:
    """A served config, ready; stopped (and killed if need be) on exit, even on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "aegis.toml"
    config_path.write_text(config_text)
    server = start_server(config_path, workdir / "server.log", env, python, preexec_fn, port=port)
    try:
        server.wait_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)


def exit_of(tmp_path: Path, config_text: str) -> tuple[int, str]:
    """Start a server that is expected to refuse to start: its exit code and its log."""
    config = tmp_path / "aegis.toml"
    config.write_text(config_text)
    server = start_server(config, tmp_path / "server.log")
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    return code, server.log()


def run_until_exit(tmp_path: Path, models: str) -> tuple[int, str]:
    """`exit_of` a config of `models` alone: a model that cannot come up stops the start."""
    return exit_of(tmp_path, f'[storage]\ncache_dir = "{tmp_path / "cache"}"\n' + models)
