"""A client that stalls cannot hold a connection for good (slowloris), and holds up nobody else:
a body that stops arriving, or trickles in under the minimum rate, is answered 408 and its
connection closed, at the V2 door and at Vertex AI's predict route; a request whose headers never
end is closed by the keep-alive timer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lifecycle.server import KEEP_ALIVE_S
from appliance.rest.client import BODY_MIN_RATE, BODY_STALL_S
from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.http import call, free_port
from tests.support.server import ServerProcess, running_server

V2_BODY = json_infer("x", "FP32", [1, 8], [0.5] * 8)
VERTEX_BODY = json.dumps({"instances": [[0.5] * 8]}).encode()
# Beyond each bound, the most a loaded machine may add before the server acts.
SLACK_S = 10.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("stalled")
    port = free_port()
    vertex = {"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/predict"}
    config = server_config(workdir, model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    with running_server(config, workdir, vertex, port=port) as served:
        yield served


BOTH_DOORS = pytest.mark.parametrize(
    ("path", "body"),
    [("/v2/models/mlp/infer", V2_BODY), ("/predict", VERTEX_BODY)],
    ids=["v2", "vertex"],
)


def request_head(path: str, body: bytes) -> bytes:
    """A POST's request line and headers for `body`, the body itself not included."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


def assert_refused_with_408(reply: bytes, reason: bytes) -> None:
    """`reply` is a 408 that closes its connection and gives `reason`."""
    head, _, text = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply
    assert b"connection: close" in head.lower()
    assert reason in text


def read_until_closed(sock: socket.socket, within_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails past `within_s`."""
    received = b""
    deadline = time.monotonic() + within_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the connection was still open after {within_s} s: {received!r}"
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


@BOTH_DOORS
def test_a_stalled_body_is_refused_and_its_connection_closed(
    server: ServerProcess, path: str, body: bytes
) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sent_at = time.monotonic()
        sock.sendall(request_head(path, body) + body[: len(body) // 2])
        # Another client meanwhile is answered as usual.
        assert call(server, "POST", path, body).status == 200
        reply = read_until_closed(sock, BODY_STALL_S + SLACK_S)
        waited_s = time.monotonic() - sent_at
    assert_refused_with_408(reply, b"the request body stalled")
    assert waited_s >= BODY_STALL_S
    assert call(server, "POST", path, body).status == 200


@BOTH_DOORS
def test_a_body_trickled_a_byte_a_second_is_refused_and_its_connection_closed(
    server: ServerProcess, path: str, body: bytes
) -> None:
    # A byte a second never stalls for BODY_STALL_S; the body needs enough bytes to outlast the
    # bound and its slack, so that the server, not the body's end, ends the upload.
    assert len(body) > BODY_STALL_S + SLACK_S and BODY_MIN_RATE > 1
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sent_at = time.monotonic()
        sock.sendall(request_head(path, body))
        reply = b""
        for index in range(len(body)):
            sock.sendall(body[index : index + 1])
            sock.settimeout(1.0)
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            break
        assert reply, "the whole body was sent without a reply"
        reply += read_until_closed(sock, SLACK_S)
        waited_s = time.monotonic() - sent_at
    assert_refused_with_408(reply, b"the request body is too slow")
    assert waited_s >= BODY_STALL_S
    assert call(server, "POST", path, body).status == 200


def test_headers_that_never_end_are_closed_by_the_keep_alive_timer(server: ServerProcess) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n")
        assert read_until_closed(sock, KEEP_ALIVE_S + SLACK_S) == b""
