"""ONNX string (BYTES) tensors come back as the strings the model returned, in JSON and binary."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tests.conftest import ServerFactory
from tests.support.bodies import binary_body, json_infer
from tests.support.config import model_table
from tests.support.http import call
from tests.support.models import onnx_strings

WORDS = ["hello", "été", ""]


def length_prefixed(words: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(word)) + word for word in words)


def test_string_tensors_round_trip_as_strings(serve: ServerFactory, tmp_path: Path) -> None:
    artifact = onnx_strings(tmp_path / "strings.onnx")
    server = serve(model_table("strings", artifact, 'runtime = "onnx"\nmax_batch_size = 4'))
    body = json_infer("s", "BYTES", [3, 1], WORDS)
    reply = call(server, "POST", "/v2/models/strings/infer", body)
    assert reply.status == 200, reply
    assert reply.json()["outputs"][0]["data"] == WORDS

    encoded = [word.encode() for word in WORDS]
    tensor = length_prefixed(encoded)
    document = {
        "inputs": [
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [3, 1],
                "parameters": {"binary_data_size": len(tensor)},
            }
        ],
        "outputs": [{"name": "t", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(document, tensor)
    reply = call(server, "POST", "/v2/models/strings/infer", body, headers)
    assert reply.status == 200, reply
    start = int(reply.headers["inference-header-content-length"])
    assert json.loads(reply.body[:start])["outputs"][0]["shape"] == [3, 1]
    assert reply.body[start:] == tensor


def test_a_string_that_is_not_utf8_fails_alone_naming_its_input(
    serve: ServerFactory, tmp_path: Path
) -> None:
    artifact = onnx_strings(tmp_path / "strings.onnx")
    server = serve(model_table("strings", artifact, 'runtime = "onnx"'))
    tensor = length_prefixed([b"\xff\xfe"])
    document = {
        "inputs": [
            {"name": "s", "datatype": "BYTES", "shape": [1, 1]}
            | {"parameters": {"binary_data_size": len(tensor)}}
        ]
    }
    body, headers = binary_body(document, tensor)
    reply = call(server, "POST", "/v2/models/strings/infer", body, headers)
    assert reply.status == 500
    assert "input 's'" in reply.error() and "UTF-8" in reply.error()
