"""Vertex AI instances become tensors of the declared datatype, or a 400 naming the instance,
the input and why: never a value the client did not send."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.errors import InvalidInput
from appliance.tensors import TensorSpec
from appliance.vertex.predict import decode_instances


def one_input(datatype: str) -> tuple[TensorSpec, ...]:
    return (TensorSpec("x", datatype, (-1, 2)),)


@pytest.mark.parametrize(
    ("datatype", "row"),
    [
        ("FP16", [1.0, 70000]),
        ("FP32", [1e39, 0.0]),
        ("BF16", [3.3999e38, 0.0]),  # a float32, past bfloat16's largest once rounded
        ("INT8", [1, 300]),
        ("UINT16", [-1, 0]),
    ],
)
def test_a_number_the_datatype_cannot_hold_is_refused(datatype: str, row: list[float]) -> None:
    with pytest.raises(InvalidInput, match=f"instance 1: input 'x': .*out of range for {datatype}"):
        decode_instances([[0, 0], row], one_input(datatype))


def test_the_largest_values_each_datatype_holds_are_taken_as_sent() -> None:
    half = decode_instances([[65504, -65504.0]], one_input("FP16"))["x"]
    assert half.dtype == np.float16 and half.tolist() == [[65504.0, -65504.0]]
    bf16 = decode_instances([[3.3895e38, 1.0]], one_input("BF16"))["x"]
    widened = (bf16.astype(np.uint32) << 16).view(np.float32)
    assert widened[0, 1] == 1.0 and np.isfinite(widened).all() and widened[0, 0] > 3.38e38


@pytest.mark.parametrize(
    ("datatype", "row", "ones"),
    [
        ("FP32", [0.5, True], [1, 1]),
        ("INT64", [False, 3], [1, 1]),
        ("FP16", [[1.0], [True]], [[1], [1]]),
    ],
)
def test_true_or_false_among_numbers_is_refused_not_read_as_one_or_zero(
    datatype: str, row: list[object], ones: list[object]
) -> None:
    spec = (TensorSpec("x", datatype, (-1, *np.asarray(ones).shape)),)
    message = f"instance 1: input 'x': mixes true/false with {datatype}"
    with pytest.raises(InvalidInput, match=message):
        decode_instances([ones, row], spec)
