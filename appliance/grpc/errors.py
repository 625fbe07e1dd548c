"""Failures as gRPC statuses: the code that stands for HTTP's status, and HTTP's message."""

from __future__ import annotations

import grpc

from appliance.errors import (
    DeadlineExceeded,
    InferenceError,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
)
from appliance.rest.errors import client_message

# A subclass takes its base's code, as ERROR_STATUS does for HTTP statuses.
_CODES: dict[type[InferenceError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    QueueFull: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelFailed: grpc.StatusCode.INTERNAL,
}
# The HTTP status each code stands for: the `code` label of the request metrics, so one
# dashboard counts both protocols' answers alike.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class RpcFailure(Exception):
    """A failure only the gRPC layer knows about (a missing token, a cancelled call)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_of(error: InferenceError | RpcFailure) -> tuple[grpc.StatusCode, str]:
    """The code and the client-safe message for `error`."""
    if isinstance(error, RpcFailure):
        return error.code, str(error)
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls], client_message(error)
    return grpc.StatusCode.INTERNAL, client_message(error)
