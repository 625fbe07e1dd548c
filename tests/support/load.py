"""For tests that load a server: one torch thread, Slow-model requests of a chosen length, and
the process's peak memory."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.http import call
from tests.support.server import ServerProcess

# One torch thread per server: with two, a matmul on two shared cores stalls whenever the other
# core is busy (field notes: batch-8 latency swung to 7.7 ms), and timing-bound tests flake.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def slow_body(rounds: int) -> bytes:
    """A request for the Slow test model (x FP32 [-1, 1]): `rounds` 256x256 matmuls."""
    return json_infer("x", "FP32", [1, 1], [rounds])


def rounds_for(server: ServerProcess, seconds: float, model: str = "slow") -> int:
    """Matmul rounds of the Slow model that take about `seconds` here, now (HTTP cost aside)."""

    def fastest(rounds: int) -> float:
        timings = []
        for _ in range(3):
            started = time.monotonic()
            reply = call(server, "POST", f"/v2/models/{model}/infer", slow_body(rounds))
            assert reply.status == 200, reply
            timings.append(time.monotonic() - started)
        return min(timings)

    fastest(1)  # the first call pays for warming up
    per_round = max((fastest(51) - fastest(1)) / 50, 1e-5)
    return max(int(seconds / per_round), 1)
