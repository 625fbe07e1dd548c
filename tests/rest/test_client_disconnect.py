"""A client that goes away before its batch starts is dropped: never computed, counted as 499,
at the V2 door and at Vertex AI's predict route alike."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.support.http import free_port, get_text
from tests.support.load import (
    ONE_THREAD,
    computing,
    in_background,
    queue_depth,
    rounds_for,
    slow_body,
    slow_model,
)
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

# The 499s of this model over HTTP.
CLOSED = (
    r'aegis_inference_requests_total\{code="499",model="slow",protocol="http",version="1"\} (\S+)'
)


def metric(server: ServerProcess, pattern: str) -> float:
    text = get_text(server, "/metrics", timeout_s=10)
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def v2_request(rounds: int) -> tuple[str, bytes]:
    return "/v2/models/slow/infer", slow_body(rounds)


def vertex_request(rounds: int) -> tuple[str, bytes]:
    return "/predict", json.dumps({"instances": [[rounds]]}).encode()


@pytest.mark.parametrize("door", [v2_request, vertex_request], ids=["v2", "vertex"])
def test_disconnected_request_is_not_computed(
    serve: ServerFactory,
    artifacts: dict[str, Path],
    door: Callable[[int], tuple[str, bytes]],
) -> None:
    port = free_port()
    vertex = {"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/predict"}
    server = serve(
        slow_model("timeout_ms = 60000").format(slow=artifacts["slow.pt"]),
        env={**ONE_THREAD, **vertex},
        port=port,
    )
    rounds = rounds_for(server, 2.0)
    batches_before = metric(server, r'aegis_batch_size_count\{model="slow",version="1"\} (\S+)')
    running, result = in_background(server, slow_body(rounds))
    wait_for(lambda: computing(server), 30, "the long batch to start")
    path, body = door(rounds)
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(
            lambda: queue_depth(server) == 1 or not running.is_alive(), 30, "the request to queue"
        )
        assert running.is_alive(), "the long batch ended before the request could queue"
    # The client has gone while its request waits behind the long batch.
    running.join(60)
    assert result[0][0] == 200
    wait_for(lambda: metric(server, CLOSED) >= 1, 10, "the abandoned request's 499")
    assert metric(server, CLOSED) == 1
    batches = metric(server, r'aegis_batch_size_count\{model="slow",version="1"\} (\S+)')
    assert batches - batches_before == 1, "the abandoned request reached the model"
