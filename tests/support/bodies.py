"""Infer request bodies as a client writes them: JSON, and the binary extension."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def json_infer(name: str, datatype: str, shape: list[int], data: Sequence[object]) -> bytes:
    """A JSON infer body with one input."""
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def binary_body(document: Mapping[str, object], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body and its Inference-Header-Content-Length header."""
    header = json.dumps(document).encode()
    return header + b"".join(tensors), {"Inference-Header-Content-Length": str(len(header))}
