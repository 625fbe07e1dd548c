"""SIGTERM over gRPC: health turns NOT_SERVING at once, calls in flight finish, then it exits."""

from __future__ import annotations

import queue
import signal
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.config import server_config
from tests.support.load import ONE_THREAD, computing, rounds_for, slow_model
from tests.support.server import running_server
from tests.support.waiting import wait_for

# Far above the call's 1.5 s of CPU: however slow the machine runs it, the drain waits for it.
GRACE_S = 60


def test_sigterm_drains_calls_in_flight(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    models = slow_model("timeout_ms = 120000").format(slow=artifacts["slow.pt"])
    config = server_config(tmp_path, models, "unready_window_s = 1.0").replace(
        "shutdown_grace_s = 5", f"shutdown_grace_s = {GRACE_S}"
    )
    assert f"shutdown_grace_s = {GRACE_S}" in config
    with running_server(config, tmp_path, ONE_THREAD) as server:
        rounds = rounds_for(server, 1.5)
        client = grpcclient.InferenceServerClient(server.grpc_address)
        answers: queue.Queue[tuple[grpcclient.InferResult, object]] = queue.Queue()
        x = grpcclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[rounds]], np.float32))
        client.async_infer("slow", [x], lambda result, error: answers.put((result, error)))
        # In flight: its batch runs (a call not yet received would meet a closing server).
        wait_for(lambda: computing(server) or not answers.empty(), 30, "the call's batch to run")
        assert answers.empty(), "the call ended before SIGTERM could find it running"
        with grpc.insecure_channel(server.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="")
            assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            server.process.send_signal(signal.SIGTERM)
            status = health_pb2.HealthCheckResponse.SERVING
            while status == health_pb2.HealthCheckResponse.SERVING:
                status = health.Check(check, timeout=10).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        result, error = answers.get(timeout=GRACE_S)
        assert error is None, error
        assert result.as_numpy("y").shape == (1, 1)
        client.close()
        assert server.process.wait(GRACE_S) == 0, server.log()[-3000:]
