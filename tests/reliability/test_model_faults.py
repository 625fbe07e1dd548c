"""Model faults stay contained: a model that raises fails only its own batch (500 with its
message, nothing of its source or paths), other models and later batches are unaffected; a model
that hangs is bounded by the request deadlines and does not keep the process from exiting;
NaN and infinite outputs are data, in JSON and in binary.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.support.bodies import binary_body, json_infer
from tests.support.config import model_table, server_config
from tests.support.fault_models import declared_table, nonfinite_table
from tests.support.http import Reply, call
from tests.support.leaks import assert_no_leak
from tests.support.load import ONE_THREAD
from tests.support.server import ServerProcess, running_server

MLP_ROW = [0.25] * 8
GRACE_S = 5.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("model-faults")
    batching = "max_batch_size = 8\nmax_queue_delay_ms = 20\nwarmup_iters = 0"
    models = (
        declared_table("failing", artifacts["failing.pt"], 2, batching)
        + model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 8\nwarmup_iters = 0")
        + nonfinite_table(workdir, "warmup_iters = 0")
    )
    with running_server(server_config(workdir, models), workdir) as served:
        yield served


def failing(server: ServerProcess, row: list[float]) -> Reply:
    return call(server, "POST", "/v2/models/failing/infer", json_infer("x", "FP32", [1, 2], row))


def mlp(server: ServerProcess) -> Reply:
    return call(server, "POST", "/v2/models/mlp/infer", json_infer("x", "FP32", [1, 8], MLP_ROW))


def test_a_raising_model_gets_500_with_its_message_and_nothing_of_its_source(
    server: ServerProcess,
) -> None:
    reply = failing(server, [-1.0, 1.0])
    assert reply.status == 500
    message = reply.error()
    assert "negative input" in message and "this request's input 'x'" in message
    assert "\n" not in message
    assert_no_leak(reply)
    # The whole TorchScript trace is for the operator, in the server's access log line.
    assert "Traceback of TorchScript" in server.wait_for_log("Traceback of TorchScript")


def test_a_bad_request_fails_alone_and_the_rest_of_its_batch_is_served(
    server: ServerProcess,
) -> None:
    """Concurrent callers, two of them with a value the model cannot take: only those two fail,
    every other caller of the same batches is answered, and the failure is counted."""
    rows = [[float(i), 1.0] for i in range(1, 17)]
    rows[3] = [-1.0, 1.0]
    rows[11] = [-2.0, 1.0]
    with ThreadPoolExecutor(16) as pool:
        failing_replies = list(pool.map(lambda row: failing(server, row), rows))
        mlp_replies = list(pool.map(lambda _: mlp(server), range(8)))
    good = 0
    for row, reply in zip(rows, failing_replies, strict=True):
        if row[0] < 0:
            assert reply.status == 500, reply
            assert "negative input" in reply.error() and "input 'x'" in reply.error()
        else:
            assert reply.status == 200, reply
            assert reply.json()["outputs"][0]["data"] == [value * 2 for value in row]
            good += 1
    assert [reply.status for reply in mlp_replies] == [200] * 8
    metrics = call(server, "GET", "/metrics").body.decode()
    counts = {
        outcome: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("aegis_failed_batch_requests_total") and 'model="failing"' in line
        for outcome in ("culprit", "rescued")
        if f'outcome="{outcome}"' in line
    }
    assert counts.get("culprit", 0) >= 2, counts
    print(
        f"\nFIGURES poisoned batch: 16 concurrent requests, 2 poisoned: {good}/14 good ones "
        f"served (200), the 2 culprits 500 naming their input; metrics: "
        f"{counts.get('rescued', 0):.0f} requests rescued from failed batches by reruns"
    )
    # Later batches of the same model are unaffected.
    later = failing(server, [3.0, 4.0])
    assert later.status == 200 and later.json()["outputs"][0]["data"] == [6.0, 8.0]
    assert call(server, "GET", "/v2/health/ready").status == 200


def test_every_good_request_is_answered_beside_many_culprits(server: ServerProcess) -> None:
    """Half of 48 concurrent requests make the model raise, so most batches hold several culprits
    (often as their first request): every good request still gets its own answer."""
    rows = [[-float(i), 1.0] if i % 2 else [float(i), 1.0] for i in range(1, 49)]
    with ThreadPoolExecutor(48) as pool:
        replies = list(pool.map(lambda row: failing(server, row), rows))
    lost = [
        (row, reply.status)
        for row, reply in zip(rows, replies, strict=True)
        if row[0] >= 0 and reply.status != 200
    ]
    assert not lost, lost
    for row, reply in zip(rows, replies, strict=True):
        if row[0] < 0:
            assert reply.status == 500 and "this request's input 'x'" in reply.error(), reply
        else:
            assert reply.json()["outputs"][0]["data"] == [value * 2 for value in row]


def test_nan_and_infinities_are_data_in_json(server: ServerProcess) -> None:
    reply = call(
        server, "POST", "/v2/models/nonfinite/infer", json_infer("x", "FP32", [1, 2], [-1.0, 0.0])
    )
    assert reply.status == 200, reply
    # JSON has no NaN: they travel as the proto3 JSON mapping spells them, which numpy (and so
    # tritonclient's as_numpy) reads back; null would lose the value and its sign.
    data = reply.json()["outputs"][0]["data"]
    assert data == ["NaN", "-Infinity", -1.0, "Infinity"]
    values = np.array(data, dtype=np.float32)
    assert math.isnan(values[0]) and values[1] == -np.inf and values[3] == np.inf


def test_what_a_json_reply_spells_can_be_sent_back(server: ServerProcess) -> None:
    row = ["NaN", "-Infinity", 0.5, "Infinity", 0.25, 0.25, 0.25, 0.25]
    reply = call(server, "POST", "/v2/models/mlp/infer", json_infer("x", "FP32", [1, 8], row))
    assert reply.status == 200, reply
    assert "NaN" in reply.json()["outputs"][0]["data"]  # NaN goes through the matmul
    reply = call(
        server, "POST", "/v2/models/mlp/infer", json_infer("x", "FP32", [1, 8], ["nan"] * 8)
    )
    assert reply.status == 400
    assert "holds the string 'nan'" in reply.error()


def test_nan_and_infinities_are_data_in_binary(server: ServerProcess) -> None:
    entry = {"name": "x", "datatype": "FP32", "shape": [1, 2]}
    document = {
        "inputs": [{**entry, "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(document, np.array([-1.0, 0.0], dtype="<f4").tobytes())
    reply = call(server, "POST", "/v2/models/nonfinite/infer", body, headers)
    assert reply.status == 200, reply
    start = int(reply.headers["inference-header-content-length"])
    assert json.loads(reply.body[:start])["outputs"][0]["parameters"]["binary_data_size"] == 16
    values = np.frombuffer(reply.body[start:], dtype="<f4")
    assert math.isnan(values[0]) and values[1] == -np.inf and values[2] == -1.0
    assert values[3] == np.inf


def test_a_hung_model_is_bounded_by_deadlines_and_the_process_still_exits(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    """A batch that never ends: its caller and the one queued behind it get 504 at their
    deadlines, another model keeps serving, and SIGTERM still exits within shutdown_grace_s."""
    slow = "max_batch_size = 1\nmax_concurrency = 1\ntimeout_ms = 800\nwarmup_iters = 0"
    models = declared_table("slow", artifacts["slow.pt"], 1, slow) + model_table(
        "mlp", artifacts["mlp.pt2"], "warmup_iters = 0"
    )
    config = server_config(tmp_path, models).replace(
        "shutdown_grace_s = 5", f"shutdown_grace_s = {GRACE_S}"
    )
    with running_server(config, tmp_path, ONE_THREAD) as server:
        hang = json_infer("x", "FP32", [1, 1], [1e9])  # a billion matmuls: hours
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            first = pool.submit(call, server, "POST", "/v2/models/slow/infer", hang)
            time.sleep(0.2)
            second = pool.submit(call, server, "POST", "/v2/models/slow/infer", hang)
            assert mlp(server).status == 200
            replies = [first.result(10), second.result(10)]
        elapsed = time.monotonic() - started
        assert [reply.status for reply in replies] == [504, 504]
        assert "while its batch was running" in replies[0].error()
        assert "before its batch started" in replies[1].error()
        assert elapsed < 3.0, elapsed
        assert mlp(server).status == 200

        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(GRACE_S + 10)
        took = time.monotonic() - stopping
        assert code == 0, server.log()[-3000:]
        assert took < GRACE_S + 1.5, took
        assert "exiting_with_model_threads_running" in server.log()
