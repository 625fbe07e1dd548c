"""The request every server gets: the same V2 body (binary tensors for Aegis binary)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import models
import numpy as np
import orjson


@dataclass(frozen=True)
class Target:
    """One thing wrk loads: a path on a server and the body and headers it posts."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    check: bool = True  # the reply holds the model's output, compared with the expected one


@dataclass(frozen=True)
class Payload:
    rows: np.ndarray
    expected: np.ndarray
    json_body: bytes
    binary_body: bytes
    binary_header_length: int
    reply: bytes  # Aegis's JSON reply for this request: the HTTP ceiling returns its size

    def json_target(self, name: str, path: str, check: bool = True) -> Target:
        return Target(name, path, self.json_body, {"Content-Type": "application/json"}, check)

    def binary_target(self, name: str, path: str) -> Target:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(self.binary_header_length),
        }
        return Target(name, path, self.binary_body, headers)


def make_payload(model_name: str, artifacts: Path) -> Payload:
    import torch

    from appliance.dataplane import OutputTensor
    from appliance.rest.codec import encode_response

    rows = np.random.default_rng(64).standard_normal((1, models.INPUTS)).astype(np.float32)
    module = torch.export.load(str(artifacts / f"{model_name}.pt2")).module()
    with torch.no_grad():
        expected = module(torch.from_numpy(rows)).numpy()
    tensor = {"name": "input__0", "shape": [1, models.INPUTS], "datatype": "FP32"}
    json_body = orjson.dumps(
        {"inputs": [{**tensor, "data": rows.reshape(-1)}]}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    reply, _ = encode_response(
        model_name, "1", None, [OutputTensor("output__0", "FP32", expected, False)]
    )
    return Payload(rows, expected, json_body, header + rows.tobytes(), len(header), reply)


def output_of(body: bytes, header_length: str | None) -> np.ndarray:
    """The first output of a V2 reply, JSON or binary."""
    if header_length is None:
        document = orjson.loads(body)
        return np.asarray(document["outputs"][0]["data"], dtype=np.float32)
    split = int(header_length)
    return np.frombuffer(body[split:], dtype="<f4")
