"""Error responses: every failure is a non-2xx status with `{"error": "<what and why>"}`."""

from __future__ import annotations

import re

import orjson
from starlette.responses import Response

from appliance.errors import InferenceError, ModelFailed, ModelNotReady, QueueFull
from appliance.rest.protocol import ERROR_STATUS


class HTTPFailure(Exception):
    """A failure that only the HTTP layer knows about (413, 401, 415...)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# An absolute or relative-to-home/dot path, not preceded by a word character (so "1/x" stays).
_PATH = re.compile(r"(?<![\w.~-])(?:~|\.{1,2})?/(?:[\w.@+-]+/)*[\w.@+-]+")


def client_message(error: InferenceError) -> str:
    """What the client may see of `error`; the server's log keeps the whole message.

    A model failure carries third-party text: TorchScript appends both tracebacks, with the path
    and source of the file the model was scripted from. The client gets the first and last lines
    (what failed, and the model's own exception), with any file-system path redacted.
    """
    message = str(error)
    if not isinstance(error, ModelFailed):
        return message
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1:
        message = f"{lines[0]} ... {lines[-1]}"
    return _PATH.sub("<path>", message)


def status_of(error: InferenceError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def failure_response(error: Exception) -> Response:
    """The response for an expected failure; the message is safe to show to the client."""
    if isinstance(error, HTTPFailure):
        return error_response(error.status, str(error), error.headers)
    assert isinstance(error, InferenceError)
    headers = None
    if isinstance(error, (QueueFull, ModelNotReady)):
        retry = error.retry_after_s if isinstance(error, QueueFull) else 1
        headers = {"Retry-After": str(retry)}
    return error_response(status_of(error), client_message(error), headers)
