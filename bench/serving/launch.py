"""What every server's start shares: its own directory, a free port, the server core, its log."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serving.payload import Target
from serving.procs import Fleet

HOST = "127.0.0.1"
# The files that the peer servers load (handlers, the LitServe app).
PEER_FILES = Path(__file__).resolve().parents[1] / "peers"
SERVER_CORE = "0"
CLIENT_CORE = "1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    key: str
    proc: subprocess.Popen[bytes]
    port: int
    targets: list[Target]
    log: Path
    metrics_model: str | None = None  # the model name in Aegis's /metrics, for batch sizes
    grpc_port: int | None = None  # Aegis's gRPC front door


@dataclass
class Launch:
    """Starts servers pinned to the server core, each in a fresh directory under `work`."""

    fleet: Fleet
    work: Path
    artifacts: Path
    cores: str = SERVER_CORE  # what the servers may run on
    # One intra-op thread each; False: every server sets its own, as it would when deployed.
    one_thread: bool = True

    def home(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def spawn(
        self, command: list[str | Path], home: Path, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Runs `command` on the server cores with its output in `home/server.log`."""
        log = home / "server.log"
        # Every server gets one intra-op thread on its one core (field notes: stable latency).
        base: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
        if self.one_thread:
            base |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pinned = ["taskset", "-c", self.cores, *map(str, command)]
        return self.fleet.start(pinned, log, home, {**base, **(env or {})}), log
