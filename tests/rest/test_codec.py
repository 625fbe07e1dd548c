"""JSON and binary tensor decoding/encoding, and the errors bad bodies get."""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
import orjson
import pytest

from appliance.dataplane import OutputTensor
from appliance.errors import InvalidInput
from appliance.rest.codec import decode_request, encode_response


def binary_body(header: Mapping[str, object], *chunks: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), len(head)


def test_json_tensors_decode_nested_or_flat() -> None:
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
                {"name": "b", "datatype": "INT64", "shape": [2], "data": [7, -8]},
                {"name": "c", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
            ],
        }
    )
    decoded = decode_request(body, None, "m", None)
    assert decoded.id == "r1"
    assert decoded.inputs["a"].dtype == np.float32
    assert decoded.inputs["a"].tolist() == [[1, 2], [3, 4.5]]
    assert decoded.inputs["b"].tolist() == [7, -8]
    assert decoded.inputs["c"].tolist() == [[True, False]]


def test_binary_tensors_are_views_of_the_body() -> None:
    values = np.arange(6, dtype="<f4")
    flags = np.array([1, 0, 1], dtype=np.uint8)
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"binary_data_size": 24},
            },
            {"name": "f", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    body, length = binary_body(header, values.tobytes(), flags.tobytes())
    decoded = decode_request(body, length, "m", None)
    assert decoded.inputs["x"].tolist() == values.reshape(2, 3).tolist()
    assert decoded.inputs["f"].tolist() == [True, False, True]
    assert decoded.outputs is not None and decoded.outputs[0].binary


def test_bytes_tensors_binary_and_json() -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz"))
    header = {
        "inputs": [
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    body, length = binary_body(header, raw)
    assert decode_request(body, length, "m", None).inputs["s"].tolist() == [b"ab", b"", b"xyz"]
    body = orjson.dumps(
        {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["hé", "x"]}]}
    )
    assert decode_request(body, None, "m", None).inputs["s"].tolist() == ["hé".encode(), b"x"]


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}]}',
            None,
            "unknown datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}',
            None,
            "needs 3 elements",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative integers",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}',
            None,
            "floating-point numbers, not INT32",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}',
            None,
            "out of range",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [2], "data": [1, 70000]}]}',
            None,
            "out of range for FP16",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e39]}]}',
            None,
            "out of range for FP32",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [2],'
            b' "data": ["Infinity", 65520.0]}]}',
            None,
            "out of range for FP16",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, "a"]}]}',
            None,
            "not FP32",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}',
            None,
            "rectangular",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}',
            None,
            "neither 'data' nor binary_data_size",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},'
            b' {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            None,
            "given twice",
        ),
        (b"{}", 99, "but the body has 2 bytes"),
    ],
)
def test_bad_bodies_get_a_clear_message(
    body: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(body, header_length, "m", None)


def test_binary_size_past_the_body_is_refused() -> None:
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
        ]
    }
    body, length = binary_body(header, b"\0" * 8)
    with pytest.raises(InvalidInput, match="runs past the body"):
        decode_request(body, length, "m", None)


def test_trailing_binary_bytes_are_refused() -> None:
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}
        ]
    }
    body, length = binary_body(header, b"\0" * 8)
    with pytest.raises(InvalidInput, match="4 bytes of binary data follow"):
        decode_request(body, length, "m", None)


def test_bytes_element_longer_than_its_tensor_is_refused() -> None:
    raw = struct.pack("<I", 1000) + b"abc"
    header = {
        "inputs": [
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    body, length = binary_body(header, raw)
    with pytest.raises(InvalidInput, match="runs past its tensor"):
        decode_request(body, length, "m", None)


def test_huge_shapes_do_not_allocate() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**62, 2**62], "data": [1]}]}
    )
    with pytest.raises(InvalidInput, match="larger than any tensor"):
        decode_request(body, None, "m", None)


def test_response_json_and_binary() -> None:
    y = np.array([[1.5, 2.0]], dtype=np.float32)
    body, length = encode_response("m", "1", "abc", [OutputTensor("y", "FP32", y, False)])
    assert length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "abc",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}],
    }
    body, length = encode_response("m", "1", None, [OutputTensor("y", "FP32", y, True)])
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(body[length:], "<f4").tolist() == [1.5, 2.0]


def test_empty_tensor_with_an_absurd_dimension_is_refused() -> None:
    header = {
        "inputs": [
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [0, 2**60],
                "parameters": {"binary_data_size": 0},
            }
        ]
    }
    body, length = binary_body(header)
    with pytest.raises(InvalidInput, match="larger than any tensor"):
        decode_request(body, length, "m", None)


def json_input(datatype: str, data: list[object]) -> bytes:
    tensor = {"name": "x", "datatype": datatype, "shape": [len(data)], "data": data}
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_non_finite_floats_as_replies_spell_them_are_taken_back(datatype: str) -> None:
    reply, _ = encode_response(
        "m",
        "1",
        None,
        [OutputTensor("y", datatype, np.array([1.5, np.nan, np.inf, -np.inf]), False)],
    )
    data = orjson.loads(reply)["outputs"][0]["data"]
    assert data == [1.5, "NaN", "Infinity", "-Infinity"]
    decoded = decode_request(json_input(datatype, data), None, "m", None).inputs["x"]
    assert decoded.dtype == np.dtype(f"float{datatype[2:]}")
    assert decoded[0] == 1.5 and np.isnan(decoded[1])
    assert decoded[2] == np.inf and decoded[3] == -np.inf


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", [1.0, "nan"], "holds the string 'nan'"),
        ("FP32", ["1.5"], "holds the string '1.5'"),
        ("FP32", [1.0, "NaN", True], "mixes true/false or null"),
        ("FP32", [None, "NaN"], "mixes true/false or null"),
        ("INT32", [1, "NaN"], "holds strings, not INT32 values"),
    ],
)
def test_other_strings_in_numeric_data_are_refused(
    datatype: str, data: list[object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(json_input(datatype, data), None, "m", None)


def test_floats_at_the_edge_of_their_type_are_taken_as_sent() -> None:
    """The largest finite values, and values that round to them, are numbers the type holds."""
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "h", "datatype": "FP16", "shape": [3], "data": [65504, -65504.0, 65519]},
                {"name": "f", "datatype": "FP32", "shape": [2], "data": [3.4028234e38, 1e-50]},
                {"name": "s", "datatype": "FP16", "shape": [2], "data": ["-Infinity", 65504]},
            ]
        }
    )
    decoded = decode_request(body, None, "m", None).inputs
    assert decoded["h"].tolist() == [65504.0, -65504.0, 65504.0]
    assert decoded["f"].tolist() == [float(np.finfo(np.float32).max), 0.0]
    assert decoded["s"].tolist() == [-np.inf, 65504.0]


def test_binary_bool_bytes_other_than_0_and_1_are_refused() -> None:
    header = {
        "inputs": [
            {
                "name": "c",
                "datatype": "BOOL",
                "shape": [1, 3],
                "parameters": {"binary_data_size": 3},
            }
        ]
    }
    body, length = binary_body(header, bytes([1, 0, 1]))
    assert decode_request(body, length, "m", None).inputs["c"].tolist() == [[True, False, True]]
    body, length = binary_body(header, bytes([1, 0, 255]))
    with pytest.raises(InvalidInput, match="input 'c': BOOL elements are bytes 0 or 1, found 255"):
        decode_request(body, length, "m", None)
