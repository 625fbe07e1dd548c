"""SIGTERM over gRPC: health turns NOT_SERVING at once, calls in flight finish, then it exits."""

from __future__ import annotations

import queue
import signal
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ServerFactory
from tests.support.load import rounds_under_load, slow_model


def test_sigterm_drains_calls_in_flight(serve: ServerFactory, artifacts: dict[str, Path]) -> None:
    server = serve(
        slow_model("timeout_ms = 60000").format(slow=artifacts["slow.pt"]),
        "unready_window_s = 1.0",  # of shutdown_grace_s = 5: about 3 s to drain
    )
    rounds = rounds_under_load(server, 1.5)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    answers: queue.Queue[tuple[grpcclient.InferResult, object]] = queue.Queue()
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[rounds]], np.float32))
    client.async_infer("slow", [x], lambda result, error: answers.put((result, error)))
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        status = health_pb2.HealthCheckResponse.SERVING
        while status == health_pb2.HealthCheckResponse.SERVING:
            status = health.Check(check, timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    result, error = answers.get(timeout=60)
    assert error is None, error
    assert result.as_numpy("y").shape == (1, 1)
    client.close()
    assert server.process.wait(30) == 0
