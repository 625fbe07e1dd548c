"""What the Open Inference Protocol, as this server speaks it, fixes for every endpoint.

The codec enforces these, the error responses use them and the OpenAPI document states them:
each is written once, here.
"""

from __future__ import annotations

import math

from appliance.errors import (
    DeadlineExceeded,
    InferenceError,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
)

# Parameters the codec refuses on a request, an input or an output: shared-memory tensors are not
# supported.
RESERVED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

# How replies spell the floats JSON has no numbers for (the proto3 JSON mapping's spelling), and
# what requests may send back.
SPELLED_FLOATS: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# The status of each failure the protocol layer reports; a subclass takes its base's.
ERROR_STATUS: dict[type[InferenceError], int] = {
    InvalidInput: 400,
    ModelNotFound: 404,
    ModelNotReady: 503,
    QueueFull: 503,
    DeadlineExceeded: 504,
    ModelFailed: 500,
}

# Every error status an endpoint may answer with, and what it means there.
ERROR_REASONS: dict[int, str] = {
    400: "malformed or mismatched input",
    401: "missing or wrong bearer token",
    403: "repository endpoints are off",
    404: "unknown model or version",
    405: "method not allowed (see Allow)",
    413: "body too large",
    415: "unsupported Content-Encoding",
    500: "the model failed",
    503: "not ready, or queue full (see Retry-After)",
    504: "deadline passed",
}


def spelled(value: float) -> str:
    """The spelling of a non-finite float in a JSON reply."""
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
