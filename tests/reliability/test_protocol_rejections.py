"""Protocol-level rejections. Where the request reaches the app (odd but parseable paths, percent
escapes that are not UTF-8, absolute URIs, large headers within h11's limit) the reply is
`{"error": ...}`. Where h11 refuses the bytes themselves (bad chunk sizes, control or non-ASCII
bytes in the target, a non-numeric Content-Length, no Host, a bad method token), Hypercorn
answers 400 itself, with an empty body and `Connection: close`, before any app code runs: no
Hypercorn setting or hook changes that body (tests/RELIABILITY.md). Either way the server keeps
serving."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.server import ServerProcess

HOST = b"Host: t\r\n"
CLOSE = b"Connection: close\r\n"  # so the reply's end is the connection's
APP_DECIDES = {
    "percent escapes that are not UTF-8": b"GET /v2/models/%ff%fe/ready HTTP/1.1\r\n"
    + HOST
    + CLOSE,
    "absolute URI": b"GET http://elsewhere/v2/nothing HTTP/1.1\r\n" + HOST + CLOSE,
    "large header": (
        b"GET /v2/nothing HTTP/1.1\r\n" + HOST + CLOSE + b"X-Big: " + b"a" * 12000 + b"\r\n"
    ),
    "unknown route": b"GET /%2e%2e/etc/passwd HTTP/1.1\r\n" + HOST + CLOSE,
}
HYPERCORN_ANSWERS = {
    "bad chunk size": (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n"
    ),
    "chunk shorter than its size": (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nab\r\n0\r\n"
    ),
    "control byte in the path": b"GET /v2/\x01x HTTP/1.1\r\n" + HOST,
    "non-ASCII byte in the path": b"GET /v2/models/\xff/ready HTTP/1.1\r\n" + HOST,
    "Content-Length not a number": (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n"
    ),
    "no Host": b"GET /v2/health/live HTTP/1.1\r\n",
    "bad method": b"G@T /v2/health/live HTTP/1.1\r\n" + HOST,
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    from tests.support.server import running_server

    workdir = tmp_path_factory.mktemp("protocol")
    models = model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0")
    with running_server(server_config(workdir, models), workdir) as served:
        yield served


def raw(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        # One write: bytes arriving after Hypercorn has answered and closed would be reset.
        sock.sendall(request + b"\r\n")
        with contextlib.suppress(OSError):  # it may have answered and closed already
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("case", sorted(APP_DECIDES))
def test_rejections_the_app_decides_carry_an_error_body(server: ServerProcess, case: str) -> None:
    status, _, body = raw(server, APP_DECIDES[case])
    assert 400 <= status < 500, (status, body)
    document = json.loads(body)
    assert set(document) == {"error"} and document["error"], document


@pytest.mark.parametrize("case", sorted(HYPERCORN_ANSWERS))
def test_rejections_hypercorn_answers_itself_are_400_and_close(
    server: ServerProcess, case: str
) -> None:
    status, headers, body = raw(server, HYPERCORN_ANSWERS[case])
    assert status == 400, (status, body)
    assert headers.get("connection") == "close"
    assert call(server, "GET", "/v2/health/live").status == 200
