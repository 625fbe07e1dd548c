"""Triton's classification extension: the top K classes of an output instead of its raw tensor.

Each returned element is the string "<value>:<index>" or, where the model has a label for that
index, "<value>:<index>:<label>"; the tensor is BYTES of shape [batch..., K]. Classes are the
last dimension; they rank by value, highest first, ties by lower index first.
"""

from __future__ import annotations

import numpy as np

from appliance.errors import InvalidInput


def top_classes(name: str, scores: np.ndarray, count: int, labels: tuple[str, ...]) -> np.ndarray:
    """The top `count` classes along the last axis of output `name`'s `scores`."""
    classes = scores.shape[-1]
    if count > classes:
        raise InvalidInput(
            f"output {name!r}: 'classification' asks for {count} classes, the output has {classes}"
        )
    values = scores.astype(np.int8) if scores.dtype == np.bool_ else scores
    # A stable ascending sort of the reversed classes, reversed back: highest first, and among
    # equal values the lower index first (a plain descending sort would put the higher first).
    reversed_order = np.argsort(values[..., ::-1], axis=-1, kind="stable")[..., ::-1]
    indices = (classes - 1 - reversed_order)[..., :count]
    top = np.take_along_axis(values, indices, axis=-1)
    result = np.empty(indices.shape, dtype=np.object_)
    flat = result.reshape(-1)
    # str() of a numpy scalar is its shortest round-trip spelling in its own precision (0.1 for a
    # float32 0.1, where Python's float, and so an f-string, spells 0.10000000149011612).
    for position, (value, index) in enumerate(
        zip(top.reshape(-1), indices.reshape(-1).tolist(), strict=True)
    ):
        text = f"{value!s}:{index}"
        if index < len(labels):
            text += f":{labels[index]}"
        flat[position] = text.encode()
    return result
