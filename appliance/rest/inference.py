"""Model metadata, readiness, config and the infer endpoint."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import zlib

import structlog
from starlette.requests import Request
from starlette.responses import Response

from appliance.errors import InferenceError, InvalidInput
from appliance.repository import ServedModel
from appliance.rest.codec import OutputTensor, decode_request, encode_response
from appliance.rest.errors import HTTPFailure, error_response, failure_response, status_of
from appliance.rest.health import json_response

log = structlog.get_logger("aegis.access")

HEADER_LENGTH = "inference-header-content-length"
# Request ids end up in logs and headers: keep them short and free of control characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# A client that went away: nginx's convention, so dashboards can tell it from server errors.
CLIENT_CLOSED = 499


def _model(request: Request) -> ServedModel:
    params = request.path_params
    return request.app.state.aegis.repository.get(params["model_name"], params.get("model_version"))


async def model_metadata(request: Request) -> Response:
    try:
        return json_response(_model(request).metadata())
    except InferenceError as error:
        return failure_response(error)


async def model_ready(request: Request) -> Response:
    try:
        model = _model(request)
    except InferenceError as error:
        return failure_response(error)
    if not model.ready:
        return error_response(503, f"model {model.name!r} is not ready", {"Retry-After": "1"})
    return json_response({"name": model.name, "version": model.version, "ready": True})


async def model_config(request: Request) -> Response:
    try:
        return json_response(_model(request).triton_config())
    except InferenceError as error:
        return failure_response(error)


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 past `limit` bytes (compressed or not)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPFailure(413, f"request body of {declared} bytes exceeds {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPFailure(413, f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPFailure(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    # wbits 47 accepts gzip and zlib headers; max_length guards against decompression bombs.
    inflater = zlib.decompressobj(47)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidInput(f"body is not valid {encoding} data: {error}") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise HTTPFailure(413, f"decompressed request body exceeds {limit} bytes")
    return plain


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be an integer, got {raw!r}")
    return int(raw)


async def _watch_disconnect(request: Request, handler: asyncio.Task[object]) -> None:
    """Cancel `handler` when the client disconnects (the body has been read by then)."""
    message = await request.receive()
    if message["type"] == "http.disconnect":
        handler.cancel()


async def infer(request: Request) -> Response:
    started = time.perf_counter()
    context = request.app.state.aegis
    request_id = request_id_of(request)
    model: ServedModel | None = None
    status = 200
    fields: dict[str, object] = {}
    try:
        model = _model(request)
        body = await read_body(request, context.settings.max_request_bytes)
        decoded = decode_request(body, _header_length(request))
        rows = model.check_inputs(decoded.inputs, decoded.datatypes)
        if decoded.outputs is None:
            wanted = [(spec, decoded.binary_output) for spec in model.signature.outputs]
        else:
            wanted = [(model.output_spec(out.name), out.binary) for out in decoded.outputs]
        timeout_s = model.config.timeout_ms / 1000.0
        if decoded.timeout_us is not None:
            timeout_s = min(timeout_s, decoded.timeout_us / 1_000_000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        handler = asyncio.current_task()
        assert handler is not None
        watcher = loop.create_task(_watch_disconnect(request, handler))
        try:
            result = await model.infer(decoded.inputs, rows, deadline)
        except asyncio.CancelledError:
            if not watcher.done():
                raise
            # The watcher cancelled us because the client left: this cancellation is handled.
            handler.uncancel()
            status = CLIENT_CLOSED
            return Response(status_code=CLIENT_CLOSED)
        finally:
            watcher.cancel()
        fields = {
            "batch_size": result.batch_size,
            "queue_ms": round(result.queue_s * 1000, 3),
            "compute_ms": round(result.compute_s * 1000, 3),
        }
        outputs = [
            OutputTensor(spec.name, spec.datatype, result.outputs[spec.name], binary)
            for spec, binary in wanted
        ]
        payload, header_length = encode_response(model.name, model.version, decoded.id, outputs)
        headers = {"x-request-id": request_id}
        if header_length is None:
            return Response(payload, headers=headers, media_type="application/json")
        headers[HEADER_LENGTH] = str(header_length)
        return Response(payload, headers=headers, media_type="application/octet-stream")
    except (InferenceError, HTTPFailure) as error:
        status = error.status if isinstance(error, HTTPFailure) else status_of(error)
        fields["error"] = str(error)
        response = failure_response(error)
        response.headers["x-request-id"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        name = request.path_params["model_name"]
        if model is not None:
            model.metrics.count_request(status)
            model.metrics.request_duration.observe(elapsed)
        log.info(
            "infer",
            request_id=request_id,
            model=name,
            version=model.version
            if model is not None
            else request.path_params.get("model_version"),
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            **fields,
        )
