"""Triton's binary tensor extension under hostile input: truncated bodies, a lying
Inference-Header-Content-Length, sizes that overflow, BYTES elements whose length prefixes lie.
No 5xx, every error {"error": ...}, no leaked path, and every answer within REPLY_TIMEOUT_S.

Hypothesis drives it with a fixed derandomized seed and MAX_EXAMPLES bodies; the known-hostile
cases it found or that motivated it are pinned as plain examples below.
"""

from __future__ import annotations

import collections
import gzip
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.bodies import binary_body
from tests.support.config import model_table, server_config
from tests.support.http import Reply, call
from tests.support.leaks import assert_no_leak
from tests.support.server import ServerProcess, running_server

MAX_EXAMPLES = 500
REPLY_TIMEOUT_S = 10.0
DATATYPES = [
    *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64", "BF16", "BYTES"),
]
ITEM_SIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2}
INFER = "/v2/models/mlp/infer"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("binary-fuzzing")
    models = model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 4\nwarmup_iters = 0")
    config = server_config(workdir, models, "max_request_bytes = 1048576\n")
    with running_server(config, workdir) as served:
        yield served


def bytes_elements(elements: list[tuple[int, bytes]]) -> bytes:
    """BYTES tensor data: each element a little-endian u32 length (true or not), then bytes."""
    return b"".join(struct.pack("<I", length) + data for length, data in elements)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[dict[str, object], bytes]:
    """One input's JSON entry and its binary bytes; mostly well formed, never all of it."""
    datatype = draw(st.sampled_from([*DATATYPES, "FP33", ""]))
    dim = st.one_of(st.integers(0, 9), st.integers(-3, 2**66), st.sampled_from([2**31, 2**62]))
    shape = draw(st.one_of(st.just([1, 8]), st.lists(dim, max_size=4)))
    if datatype == "BYTES":
        lies = st.one_of(st.integers(0, 12), st.sampled_from([2**31, 2**32 - 1]))
        element = st.tuples(lies, st.binary(max_size=12))
        payload = bytes_elements(draw(st.lists(element, max_size=6)))
    else:
        count = 1
        size: int | float | str | list[int] | None  # a dimension, then binary_data_size
        for size in shape:
            count *= max(size, 0)
        exact = count * ITEM_SIZE.get(datatype, 4) if count <= 64 else 0
        length = draw(st.one_of(st.just(exact), st.integers(0, 80)))
        payload = draw(st.binary(min_size=length, max_size=length))
    size = draw(
        st.one_of(
            st.just(len(payload)),
            st.integers(-2, 2**70),
            st.sampled_from([None, "12", 1.5, True, [4]]),
        )
    )
    entry: dict[str, object] = {"name": draw(st.sampled_from(["x", "y", ""])), "datatype": datatype}
    entry["shape"] = shape
    if size is not None:
        entry["parameters"] = {"binary_data_size": size}
    return entry, payload


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    parts = draw(st.lists(tensors(), min_size=1, max_size=3))
    document: dict[str, object] = {"inputs": [entry for entry, _ in parts]}
    if draw(st.booleans()):
        document["parameters"] = {"binary_data_output": draw(st.booleans())}
    body, headers = binary_body(document, *(payload for _, payload in parts))
    header_length = int(headers["Inference-Header-Content-Length"])
    lie = draw(
        st.one_of(
            st.none(),
            st.integers(-3, 2**70).map(str),
            st.integers(0, 3).map(lambda delta: str(header_length + delta)),
            # Latin-1 text, as an HTTP header value can carry: "²" and "٣" are digits to isdigit().
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=8),
            st.just("9" * 5000),
        )
    )
    if lie is not None:
        headers["Inference-Header-Content-Length"] = lie
    body = body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body
    encoding = draw(st.sampled_from([None, "gzip", "gzip-lie", "br"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    if encoding is not None:
        # "gzip-lie": the header claims gzip, the body is not.
        headers["Content-Encoding"] = "gzip" if encoding == "gzip-lie" else encoding
    return body, headers


def send(server: ServerProcess, body: bytes, headers: dict[str, str]) -> Reply:
    started = time.monotonic()
    reply = call(server, "POST", INFER, body, headers, timeout_s=REPLY_TIMEOUT_S)
    assert time.monotonic() - started < REPLY_TIMEOUT_S
    assert reply.status < 500, (reply.status, reply.body[:300], headers, body[:300])
    if reply.status >= 400:
        reply.error()
    assert_no_leak(reply)
    return reply


def test_hypothesis_binary_bodies_get_no_5xx_and_no_hang(server: ServerProcess) -> None:
    seen: collections.Counter[int] = collections.Counter()

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(binary_requests())
    def one(request: tuple[bytes, dict[str, str]]) -> None:
        seen[send(server, *request).status] += 1

    one()
    print(f"\nFIGURES binary-fuzzing: {sum(seen.values())} bodies, status {sorted(seen.items())}")
    assert seen[400] > MAX_EXAMPLES // 2, seen
    assert call(server, "GET", "/v2/health/ready").status == 200
    assert "unhandled_error" not in server.log()


def good_header(**parameters: object) -> dict[str, Any]:
    entry = {"name": "x", "datatype": "FP32", "shape": [1, 8]}
    return {"inputs": [{**entry, "parameters": {"binary_data_size": 32, **parameters}}]}


@pytest.mark.parametrize(
    ("document", "payload", "header_length", "message"),
    [
        # str.isdigit() accepts superscripts and other scripts' digits; int() does not.
        (good_header(), bytes(32), "\u00b2", "must be an integer"),
        # int() refuses more than 4300 digits.
        (good_header(), bytes(32), "9" * 5000, "must be an integer"),
        (good_header(), bytes(32), "999999999999", "but the body has"),
        (good_header(binary_data_size=2**63), bytes(32), None, "runs past the body"),
        # Past 2**64 - 1 orjson reads a float: not an integer at all.
        (good_header(binary_data_size=2**64), bytes(32), None, "non-negative integer"),
        (good_header(binary_data_size=-1), bytes(32), None, "non-negative integer"),
        (good_header(binary_data_size=[32]), bytes(32), None, "non-negative integer"),
        (good_header(), bytes(31), None, "runs past the body"),
        (good_header(), bytes(40), None, "bytes of binary data follow"),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "BYTES",
                        "shape": [1, 8],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            bytes_elements([(2**32 - 1, b"abcd")]),
            None,
            "runs past its tensor",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [2**62, 2**62],
                        "parameters": {"binary_data_size": 32},
                    }
                ]
            },
            bytes(32),
            None,
            "larger than any tensor",
        ),
        (
            {"inputs": [{"name": "x", "datatype": ["FP32"], "shape": [1, 8], "data": [0] * 8}]},
            b"",
            None,
            "unknown datatype",
        ),
    ],
    ids=[
        *("superscript-digit-length", "5000-digit-length", "length-past-body"),
        *("size-2**63", "size-2**64", "size-negative", "size-list"),
        *("short-tensor", "trailing-bytes", "bytes-length-2**32-1", "shape-2**124"),
        "datatype-list",
    ],
)
def test_known_hostile_bodies_get_a_clear_400(
    server: ServerProcess,
    document: dict[str, object],
    payload: bytes,
    header_length: str | None,
    message: str,
) -> None:
    body, headers = binary_body(document, payload)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    reply = send(server, body, headers)
    assert reply.status == 400, reply
    assert message in reply.error()


def test_a_client_vanishing_mid_body_is_not_a_server_error(server: ServerProcess) -> None:
    """Content-Length promises more than arrives, then the socket closes: logged as 499."""
    body, headers = binary_body(good_header(), bytes(32))
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body) + 1000}\r\n"
        f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n\r\n"
    )
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.2)
    log = server.wait_for_log('"status":499')
    assert '"status":499' in log
    assert "unhandled_error" not in log and "Error in ASGI" not in log
    assert call(server, "GET", "/v2/health/ready").status == 200


def test_gzip_bomb_is_413_not_memory(server: ServerProcess) -> None:
    bomb = gzip.compress(json.dumps(good_header()).encode() + bytes(50 * 1024 * 1024))
    reply = send(server, bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413, reply
