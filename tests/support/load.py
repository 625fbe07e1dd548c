"""For tests that load a server: one torch thread, the Slow model's table and requests of a chosen
length, sent in the foreground or the background, and the process's peak memory."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from tests.support.config import model_table, tensor_table
from tests.support.http import call
from tests.support.metrics import scrape
from tests.support.server import ServerProcess

# One torch thread per server: with two, a matmul on two shared cores stalls whenever the other
# core is busy (field notes: batch-8 latency swung to 7.7 ms), and timing-bound tests flake.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CALIBRATION_CPU_S = 0.3


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def slow_model(extra: str) -> str:
    """The Slow model's table, one request a batch, no warmup; `{slow}` stands for its path."""
    return (
        model_table("slow", "{slow}", "max_batch_size = 1\nwarmup_iters = 0\n" + extra)
        + tensor_table("inputs", "x", "FP32", [-1, 1])
        + tensor_table("outputs", "y", "FP32", [-1, 1])
    )


def slow_body(rounds: int, timeout_us: int | None = None) -> bytes:
    """A request for the Slow test model (x FP32 [-1, 1]): `rounds` 256x256 matmuls, within the
    protocol's `timeout` parameter (microseconds) where given."""
    document: dict[str, object] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [rounds]}]
    }
    if timeout_us is not None:
        document["parameters"] = {"timeout": timeout_us}
    return json.dumps(document).encode()


def queue_depth(server: ServerProcess, model: str = "slow") -> float:
    """The requests waiting in the model's queue, by its gauge."""
    return scrape(server)("aegis_queue_depth", model=model, version="1")


def computing(server: ServerProcess, model: str = "slow") -> bool:
    """A batch of the model runs: a request was dequeued and its batch has not ended."""
    value = scrape(server)
    dequeued = value("aegis_queue_duration_seconds_count", model=model, version="1")
    return dequeued > value("aegis_compute_duration_seconds_count", model=model, version="1")


def post_slow(
    server: ServerProcess, body: bytes, timeout_s: float = 60
) -> tuple[int, dict[str, str], bytes]:
    """The Slow model's answer to `body`: status, headers (names in lower case), body."""
    reply = call(server, "POST", "/v2/models/slow/infer", body, timeout_s=timeout_s)
    return reply.status, reply.headers, reply.body


def in_background(
    server: ServerProcess, body: bytes
) -> tuple[threading.Thread, list[tuple[int, dict[str, str], bytes]]]:
    """`post_slow` on a thread of its own; its answer lands in the list once the thread ends."""
    results: list[tuple[int, dict[str, str], bytes]] = []
    thread = threading.Thread(target=lambda: results.append(post_slow(server, body)), daemon=True)
    thread.start()
    return thread, results


def server_cpu_s(server: ServerProcess) -> float:
    """utime + stime of every process in the server's process group, all their threads."""
    total_ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: fields are counted after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # it ended while the table was read
            continue
        if int(fields[2]) == server.process.pid:  # fields[2]: the process group
            total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / CLOCK_TICKS


def rounds_for(server: ServerProcess, seconds: float, model: str = "slow") -> int:
    """Matmul rounds of the Slow model that cost the server `seconds` of CPU, HTTP aside. With one
    torch thread (ONE_THREAD) a request of these rounds takes at least `seconds` on the wall, and
    about that on a quiet machine. CPU time, unlike wall time, barely moves when other processes
    share the cores, so a busy moment while it is measured does not shorten the answer."""

    def cpu_of(rounds: int) -> float:
        before = server_cpu_s(server)
        reply = call(server, "POST", f"/v2/models/{model}/infer", slow_body(rounds))
        assert reply.status == 200, reply
        return server_cpu_s(server) - before

    cpu_of(1)  # the first calls pay for warming up (TorchScript optimizes on its second run)
    cpu_of(1)
    rounds = 64
    # Long enough that the clock tick (10 ms) and the request's own cost are a few per cent.
    while (spent := cpu_of(rounds) - cpu_of(1)) < CALIBRATION_CPU_S and rounds < 2**20:
        rounds *= 4
    return max(int(seconds * rounds / max(spent, 1e-3)), 1)
