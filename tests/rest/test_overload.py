"""A full queue is refused at once with 503 + Retry-After; a passed deadline is 504 at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.conftest import ServerFactory
from tests.support.config import model_table, tensor_table
from tests.support.http import call
from tests.support.server import ServerProcess


def slow_request(rounds: int, timeout_us: int | None = None) -> bytes:
    body: dict[str, object] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [rounds]}]
    }
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return json.dumps(body).encode()


def post(
    server: ServerProcess, body: bytes, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    reply = call(server, "POST", "/v2/models/slow/infer", body, timeout_s=timeout)
    return reply.status, reply.headers, reply.body


def slow_model(extra: str) -> str:
    return (
        model_table("slow", "{slow}", "max_batch_size = 1\nwarmup_iters = 0\n" + extra)
        + tensor_table("inputs", "x", "FP32", [-1, 1])
        + tensor_table("outputs", "y", "FP32", [-1, 1])
    )


def in_background(
    server: ServerProcess, body: bytes
) -> tuple[threading.Thread, list[tuple[int, dict[str, str], bytes]]]:
    results: list[tuple[int, dict[str, str], bytes]] = []
    thread = threading.Thread(target=lambda: results.append(post(server, body)), daemon=True)
    thread.start()
    return thread, results


def rounds_for(seconds: float, server: ServerProcess) -> int:
    """How many matmul rounds take about `seconds` on this machine right now."""
    # TorchScript optimizes on its first calls: time the second of two.
    for _ in range(2):
        started = time.perf_counter()
        status, _, _ = post(server, slow_request(300))
        assert status == 200
        per_round = (time.perf_counter() - started) / 300
    return max(300, int(seconds / max(per_round, 1e-6)))


def test_full_queue_is_refused_at_once_with_retry_after(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(
        slow_model("max_queue_size = 1\ntimeout_ms = 60000").format(slow=artifacts["slow.pt"])
    )
    rounds = rounds_for(4.0, server)
    running, _ = in_background(server, slow_request(rounds))
    time.sleep(0.3)
    queued, queued_result = in_background(server, slow_request(1))
    time.sleep(0.3)
    assert running.is_alive(), "the long batch ended before the queue could fill"
    started = time.perf_counter()
    status, headers, payload = post(server, slow_request(1))
    elapsed = time.perf_counter() - started
    assert status == 503, payload
    assert headers["retry-after"] == "1"
    assert "queue full" in json.loads(payload)["error"]
    assert elapsed < 0.5, elapsed
    running.join(60)
    queued.join(60)
    assert queued_result[0][0] == 200


def test_deadline_gives_504_while_a_long_batch_still_runs(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(slow_model("timeout_ms = 60000").format(slow=artifacts["slow.pt"]))
    rounds = rounds_for(3.0, server)
    running, running_result = in_background(server, slow_request(rounds))
    time.sleep(0.3)
    started = time.perf_counter()
    status, _, payload = post(server, slow_request(1, timeout_us=300_000))
    elapsed = time.perf_counter() - started
    assert status == 504, payload
    assert "deadline passed before its batch started" in json.loads(payload)["error"]
    assert 0.25 <= elapsed < 1.5, elapsed
    assert running.is_alive(), "the long batch should still be running"
    running.join(60)
    assert running_result[0][0] == 200
