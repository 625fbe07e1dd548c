"""A JSON client of the Open Inference Protocol for tests: numpy arrays in and out."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from appliance.tensors import datatype_of, numpy_dtype


def infer(
    url: str, model: str, inputs: Mapping[str, np.ndarray], timeout_s: float = 60.0
) -> tuple[int, dict[str, np.ndarray] | str]:
    """POST one request; (200, outputs by name) or (status, the error's text)."""
    body = {
        "inputs": [
            {
                "name": name,
                "datatype": datatype_of(array),
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in inputs.items()
        ]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            reply = json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)["error"]
    return 200, {
        output["name"]: np.asarray(output["data"], dtype=numpy_dtype(output["datatype"])).reshape(
            output["shape"]
        )
        for output in reply["outputs"]
    }


def get_json(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=30) as response:
        return cast("dict[str, Any]", json.load(response))
