"""The gRPC codec on its own: messages <-> the data plane's requests, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.dataplane import InferResponse, OutputTensor
from appliance.errors import InvalidInput
from appliance.grpc.codec import decode_request, encode_response
from appliance.grpc.proto import inference_pb2 as pb


def raw_request(datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    message.inputs.add(name="x", datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message


def test_raw_tensors_decode_as_views_with_every_parameter_kind() -> None:
    message = raw_request("INT16", [2, 2], np.arange(4, dtype="<i2").tobytes())
    for key, kind, value in (
        ("b", "bool_param", True),
        ("i", "int64_param", -7),
        ("s", "string_param", "text"),
        ("d", "double_param", 0.25),
        ("u", "uint64_param", 2**63),
        ("timeout", "int64_param", 1500),
    ):
        setattr(message.parameters[key], kind, value)
    message.inputs[0].parameters["note"].string_param = "on x"
    message.outputs.add(name="y").parameters["k"].int64_param = 3
    request = decode_request(message)
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "r")
    np.testing.assert_array_equal(request.inputs["x"], np.arange(4).reshape(2, 2))
    assert request.datatypes == {"x": "INT16"}
    assert request.parameters == {"b": True, "i": -7, "s": "text", "d": 0.25, "u": 2**63}
    assert request.timeout_us == 1500
    assert request.input_parameters == {"x": {"note": "on x"}}
    assert request.outputs is not None and request.outputs[0].parameters == {"k": 3}


def test_binary_data_size_on_a_raw_input_is_checked_and_taken_out() -> None:
    """KServe's SDK sends it on each raw input (HTTP's binary extension key)."""
    message = raw_request("FP32", [1, 2], b"\0" * 8)
    size = message.inputs[0].parameters["binary_data_size"]
    size.int64_param = 8
    request = decode_request(message)
    assert request.input_parameters == {}
    np.testing.assert_array_equal(request.inputs["x"], np.zeros((1, 2), np.float32))
    size.int64_param = 4
    with pytest.raises(
        InvalidInput, match="input 'x': binary_data_size is 4, its raw_input_contents"
    ):
        decode_request(message)
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    tensor.parameters["binary_data_size"].int64_param = 4
    with pytest.raises(
        InvalidInput, match="input 'x': binary_data_size without raw_input_contents"
    ):
        decode_request(typed)


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (raw_request("FP32", [2, 2], b"\0" * 12), "input 'x': shape [2, 2] of FP32 needs 16 bytes"),
        (raw_request("FP33", [1], b""), "input 'x': unknown datatype 'FP33'"),
        (raw_request("FP32", [-1, 2], b""), "input 'x': 'shape' must be a list of non-negative"),
        (raw_request("BYTES", [2], length_prefixed(b"a")), "needs 2 BYTES elements, got 1"),
        (raw_request("BYTES", [1], b"\x09\0\0\0ab"), "BYTES element of 9 bytes runs past"),
        (raw_request("BYTES", [1], b"\x01\0"), "BYTES element length prefix cut short"),
        (raw_request("BOOL", [3], b"\x01\x00\x02"), "input 'x': BOOL elements are bytes 0 or 1"),
    ],
)
def test_bad_raw_tensors_are_refused_naming_the_input(
    message: pb.ModelInferRequest, error: str
) -> None:
    with pytest.raises(InvalidInput, match=error.replace("[", r"\[").replace("]", r"\]")):
        decode_request(message)


def test_shared_memory_and_bad_timeouts_are_refused() -> None:
    message = raw_request("FP32", [1], b"\0" * 4)
    message.inputs[0].parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(InvalidInput, match=r"input 'x': shared-memory tensors are not supported"):
        decode_request(message)
    message = raw_request("FP32", [1], b"\0" * 4)
    message.parameters["timeout"].int64_param = 0
    with pytest.raises(InvalidInput, match="'timeout' must be a positive integer"):
        decode_request(message)
    message = raw_request("FP32", [1], b"\0" * 4)
    message.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match="raw_input_contents has 2 entries for 1 inputs"):
        decode_request(message)


def test_replies_are_raw_when_asked_and_for_half_floats_always() -> None:
    outputs = [
        OutputTensor("s", "BYTES", np.array([[b"ab"], [b""]], dtype=object), True),
        OutputTensor("h", "FP16", np.array([1.5, -2.0], dtype=np.float16), True),
    ]
    response = InferResponse("m", "1", "r", outputs, 2, 0.0, 0.0)
    reply = encode_response(response, raw=False)
    assert list(reply.raw_output_contents) == [
        length_prefixed(b"ab", b""),
        np.array([1.5, -2.0], dtype="<f2").tobytes(),
    ]
    assert [list(o.shape) for o in reply.outputs] == [[2, 1], [2]]
    typed = encode_response(
        InferResponse("m", "1", None, [OutputTensor("i", "INT8", np.array([-1, 5], np.int8), True)],
                      2, 0.0, 0.0),
        raw=False,
    )  # fmt: skip
    assert not typed.raw_output_contents and not typed.id
    assert list(typed.outputs[0].contents.int_contents) == [-1, 5]
