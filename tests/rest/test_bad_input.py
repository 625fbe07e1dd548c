"""Bad requests get a clear 4xx with {"error": ...}, and the server stays healthy."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.server import ServerProcess, running_server

GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("bad-input")
    config = server_config(
        workdir,
        model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 4"),
        "max_request_bytes = 65536\n",
    )
    with running_server(config, workdir) as server:
        yield server


def post(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    reply = call(server, "POST", path, body, headers)
    return reply.status, reply.headers, reply.body


def infer(
    server: ServerProcess, body: bytes, headers: dict[str, str] | None = None, model: str = "mlp"
) -> tuple[int, dict[str, str], bytes]:
    return post(server, f"/v2/models/{model}/infer", body, headers)


def inputs(**fields: object) -> bytes:
    return json.dumps({"inputs": [{**GOOD["inputs"][0], **fields}]}).encode()


def binary_bools(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body with one BOOL input `x` holding `raw`, and its header."""
    tensor = {"name": "x", "datatype": "BOOL", "shape": [1, len(raw)]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
    return header.encode() + raw, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{oops", {}, 400, "not valid JSON"),
        (
            inputs(shape=[1, 7], data=[0.5] * 7),
            {},
            400,
            "has shape [1, 7], the model takes [-1, 8]",
        ),
        (inputs(datatype="INT32", data=[1] * 8), {}, 400, "must be FP32, got INT32"),
        (inputs(name="y"), {}, 400, "has no input 'y'"),
        (inputs(data=[1e39] + [0.5] * 7), {}, 400, "'data' has values out of range for FP32"),
        (inputs(data=[0.5] * 5), {}, 400, "needs 8 elements"),
        (inputs(shape=[5, 8], data=[0.5] * 40), {}, 400, "max_batch_size of 'mlp' is 4"),
        (json.dumps({**GOOD, "outputs": [{"name": "nope"}]}).encode(), {}, 400, "no output 'nope'"),
        (
            json.dumps(
                {**GOOD, "outputs": [{"name": "output__0"}, {"name": "output__0"}]}
            ).encode(),
            {},
            400,
            "output 'output__0' is requested twice",
        ),
        (
            json.dumps(GOOD).encode(),
            {"Inference-Header-Content-Length": "100000"},
            400,
            "but the body has",
        ),
        (json.dumps(GOOD).encode(), {"Inference-Header-Content-Length": "x"}, 400, "integer"),
        (*binary_bools(b"\x01\x00\x02"), 400, "input 'x': BOOL elements are bytes 0 or 1, found 2"),
        (b"x" * 70000, {}, 413, "exceeds 65536 bytes"),
        (gzip.compress(b" " * 200000), {"Content-Encoding": "gzip"}, 413, "decompressed"),
        (b"abc", {"Content-Encoding": "br"}, 415, "not supported"),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ],
)
def test_bad_request_gets_clear_error(
    server: ServerProcess, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    code, _, payload = infer(server, body, headers)
    assert code == status, payload
    assert message in json.loads(payload)["error"]
    assert server.status("/v2/health/ready") == 200


def test_unknown_model_and_version_are_404(server: ServerProcess) -> None:
    code, _, payload = infer(server, json.dumps(GOOD).encode(), model="nope")
    assert code == 404 and "unknown model" in json.loads(payload)["error"]
    code, _, payload = post(server, "/v2/models/mlp/versions/7/infer", json.dumps(GOOD).encode())
    assert code == 404 and "no version '7'" in json.loads(payload)["error"]


def test_gzip_body_is_accepted(server: ServerProcess) -> None:
    code, _, payload = infer(
        server, gzip.compress(json.dumps(GOOD).encode()), {"Content-Encoding": "gzip"}
    )
    assert code == 200, payload


def test_no_content_type_is_needed_and_request_id_is_echoed(server: ServerProcess) -> None:
    code, headers, _ = infer(server, json.dumps(GOOD).encode(), {"X-Request-ID": "abc-123"})
    assert code == 200
    assert headers["x-request-id"] == "abc-123"


def test_request_ids_that_could_forge_log_lines_are_replaced(server: ServerProcess) -> None:
    code, headers, _ = infer(server, json.dumps(GOOD).encode(), {"X-Request-ID": 'a" b'})
    assert code == 200
    assert headers["x-request-id"] != 'a" b' and len(headers["x-request-id"]) == 32


def test_unknown_endpoint_and_method_are_json_errors(server: ServerProcess) -> None:
    code, _, payload = post(server, "/v3/nothing", b"")
    assert code == 404 and "error" in json.loads(payload)
    code, _, payload = post(server, "/v2/health/live", b"")
    assert code == 405 and "error" in json.loads(payload)
