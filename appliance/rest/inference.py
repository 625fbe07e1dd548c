"""Model metadata, readiness, config and the infer endpoint: HTTP around the data plane."""

from __future__ import annotations

import random
import re
import time

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from appliance.dataplane import DataPlane
from appliance.errors import InferenceError, InvalidInput, QueueFull
from appliance.rest.access import Outcome, record, request_id_of
from appliance.rest.client import CLIENT_CLOSED, ClientWatch, header_value
from appliance.rest.codec import decode_request, encode_response
from appliance.rest.context import AppContext, request_context
from appliance.rest.errors import HTTPFailure, error_response, failure_response, status_of
from appliance.rest.pacing import OverloadPacing
from appliance.rest.responses import json_response

log = structlog.get_logger("aegis.rest")

HEADER_LENGTH = b"inference-header-content-length"
_JSON = (b"content-type", b"application/json")
_OCTETS = (b"content-type", b"application/octet-stream")
# ASCII digits only: str.isdigit() also takes "²" and "٣", which int() refuses (a 500), and int()
# refuses more than 4300 digits; 18 digits is beyond any body this server reads.
_HEADER_LENGTH = re.compile(r"[0-9]{1,18}")


def _plane(request: Request) -> DataPlane:
    return request_context(request).plane


async def model_metadata(request: Request) -> Response:
    params = request.path_params
    try:
        document = _plane(request).model_metadata(params["model_name"], params.get("model_version"))
    except InferenceError as error:
        return failure_response(error)
    return json_response(document)


async def model_ready(request: Request) -> Response:
    params = request.path_params
    try:
        model = _plane(request).model(params["model_name"], params.get("model_version"))
    except InferenceError as error:
        return failure_response(error)
    if not model.ready:
        return error_response(503, f"model {model.name!r} is not ready", {"Retry-After": "1"})
    return json_response({"name": model.name, "version": model.version, "ready": True})


async def model_config(request: Request) -> Response:
    params = request.path_params
    try:
        document = _plane(request).model_config(params["model_name"], params.get("model_version"))
    except InferenceError as error:
        return failure_response(error)
    return json_response(document)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """Request headers by lowercase name; the first of repeated headers wins, as in Starlette."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    return headers


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    raw = header_value(headers, HEADER_LENGTH)
    if raw is None:
        return None
    if not _HEADER_LENGTH.fullmatch(raw.strip()):
        raise InvalidInput(f"Inference-Header-Content-Length must be an integer, got {raw!r}")
    return int(raw)


def _keeps_alive(scope: Scope, headers: dict[bytes, bytes], context: AppContext) -> bool:
    if context.readiness.is_draining():
        return False  # the reply closes the connection
    if scope.get("http_version") != "1.1":
        return False  # HTTP/1.0 closes; HTTP/2 has no connection to hold, only a stream
    return b"close" not in headers.get(b"connection", b"").lower()


async def _hold_connection(send: Send, seconds: float, pacing: OverloadPacing) -> None:
    """Under overload, hold a keep-alive connection's next request for Retry-After (`seconds`,
    from `pacing`, which also ends every hold when the server stops).

    The 503 itself has gone out whole (its Content-Length is known, so the client has its answer
    at once); the response is only ended after the hold, and until then the connection reads no
    next request. A client that honours Retry-After never notices; one that retries at once, on
    the same connection, waits as it was told to, instead of making the server spend its time
    refusing it: one refusal per connection per Retry-After, so goodput stays near capacity.
    """
    try:
        # Spread around Retry-After: connections refused together must not all come back
        # together (a burst the queue cannot take, then an idle model until the next one).
        await pacing.hold(seconds * random.uniform(0.8, 1.2))
    finally:
        await send({"type": "http.response.body", "body": b""})


Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


class InferEndpoint:
    """`POST .../infer` as a plain ASGI app.

    Starlette's function-endpoint wrapper (a Request object, a nested exception-handling app and a
    Response object per request) cost about a fifth of the event loop at c=64 on the tiny model;
    this endpoint reads the scope, the body and the headers directly and sends a prebuilt header
    list. `InferFirst` routes to it ahead of Starlette, which still answers 405 for other methods.
    """

    def __init__(self, context: AppContext) -> None:
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        context = self.context
        headers = _headers(scope)
        request_id = request_id_of(header_value(headers, b"x-request-id"))
        outcome = Outcome()
        try:
            status, response_headers, body = await _serve(
                context, scope, receive, headers, request_id, outcome
            )
        except Exception as error:
            # A bug of ours: the client gets the usual 500 and no trace, the log gets the trace.
            log.error("unhandled_error", path=scope["path"], exc_info=error)
            status, response_headers, body = _failure(
                HTTPFailure(500, "internal server error"), request_id, outcome
            )
        except BaseException:
            record(scope, outcome, request_id, time.perf_counter() - started, context.access_log)
            raise
        elapsed = time.perf_counter() - started
        hold = outcome.refused and _keeps_alive(scope, headers, context)
        try:
            await send(
                {"type": "http.response.start", "status": status, "headers": response_headers}
            )
            await send({"type": "http.response.body", "body": body, "more_body": hold})
        finally:
            # After the reply: the client does not wait for the log line and the metrics.
            record(scope, outcome, request_id, elapsed, context.access_log)
        if hold:
            await _hold_connection(send, outcome.hold_s, context.pacing)


async def _serve(
    context: AppContext,
    scope: Scope,
    receive: Receive,
    headers: dict[bytes, bytes],
    request_id: str,
    outcome: Outcome,
) -> Reply:
    params = scope["path_params"]
    plane: DataPlane = context.plane
    client = ClientWatch(receive, context.client_watches)
    try:
        # Looked up apart from the room check: a refused request is still counted on its model.
        model = outcome.model = plane.model(params["model_name"], params.get("model_version"))
        limit = context.settings.max_request_bytes
        try:
            # At the door: under overload the refusal is the common answer, and it must not
            # cost an inflate or a decode.
            model.check_room()
        except QueueFull:
            # Read, not decoded: a body left unread would close the keep-alive connection.
            await client.read_raw_body(headers, limit)
            raise
        body = await client.read_body(headers, limit)
        request = decode_request(
            body, _header_length(headers), params["model_name"], params.get("model_version")
        )
        result = await client.infer(plane, request, model)
        if result is None:
            outcome.status = CLIENT_CLOSED
            return CLIENT_CLOSED, [(b"content-length", b"0")], b""
        outcome.fields = {
            "batch_size": result.batch_size,
            "batch": result.batch,
            "queue_ms": round(result.queue_s * 1000, 3),
            "compute_ms": round(result.compute_s * 1000, 3),
        }
        if result.fallback is not None:
            outcome.fields["cpu_fallback"] = result.fallback
        payload, header_length = encode_response(
            result.model_name, result.model_version, result.id, result.outputs
        )
        reply_headers = [
            (b"x-request-id", request_id.encode("latin-1")),
            (b"content-length", b"%d" % len(payload)),
        ]
        if header_length is None:
            reply_headers.append(_JSON)
        else:
            reply_headers += [_OCTETS, (HEADER_LENGTH, b"%d" % header_length)]
        return 200, reply_headers, payload
    except (InferenceError, HTTPFailure) as error:
        # A full queue at the door, or behind it (the queue filled while the body was read, or an
        # engine behind this front end holds more than this process sent it): paced alike.
        context.pacing.pace(error)
        return _failure(error, request_id, outcome)
    finally:
        client.close()


def _failure(error: InferenceError | HTTPFailure, request_id: str, outcome: Outcome) -> Reply:
    outcome.status = error.status if isinstance(error, HTTPFailure) else status_of(error)
    if isinstance(error, QueueFull):
        outcome.refused = True
        outcome.hold_s = error.retry_after_s
    outcome.fields["error"] = str(error)
    response = failure_response(error)
    return (
        outcome.status,
        [*response.raw_headers, (b"x-request-id", request_id.encode("latin-1"))],
        bytes(response.body),
    )
