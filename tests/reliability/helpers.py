"""What the reliability tests share: request bodies, leak checks, process figures."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.http import Reply
from tests.support.http import call as call  # the reliability tests take it from here
from tests.support.server import ServerProcess

# One torch thread per server: with two, a matmul on two shared cores stalls whenever the other
# core is busy (field notes: batch-8 latency swung to 7.7 ms), and timing-bound tests flake.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

# What a response body must never hold unless the client sent it: paths of this host, tracebacks.
LEAK_MARKERS = ("/tmp", "/work", "/home", "/opt", "/var", "/etc", "Traceback", 'File "')


def json_infer(name: str, datatype: str, shape: list[int], data: Sequence[object]) -> bytes:
    """A JSON infer body with one input."""
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def binary_body(document: Mapping[str, object], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body and its Inference-Header-Content-Length header."""
    header = json.dumps(document).encode()
    return header + b"".join(tensors), {"Inference-Header-Content-Length": str(len(header))}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def assert_no_leak(reply: Reply, sent: str = "") -> None:
    """The reply shows no server path or traceback that the client did not send itself."""
    text = reply.body.decode("utf-8", "replace")
    for marker in LEAK_MARKERS:
        assert marker not in text or marker in sent, f"{marker!r} in {text[:300]!r}"


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
