"""Vertex AI's predict route: `{"instances": [...], "parameters": {...}}` in, `{"predictions":
[...]}` out, the instances as one request to the data plane (they batch with everything else).

An instance is one row: the row itself for a model with one input, else an object keyed by input
name. BYTES values are strings, or `{"b64": "..."}` for binary (Vertex's convention). A
prediction is the row of the one output, or an object keyed by output name.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from typing import Any

import numpy as np
import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from appliance.dataplane import DataPlane, InferRequest, OutputTensor
from appliance.errors import InferenceError, InvalidInput, QueueFull
from appliance.logs import RequestLog
from appliance.rest.access import AccessLogSampler
from appliance.rest.client import CLIENT_CLOSED, ClientWatch, ClientWatches
from appliance.rest.codec import holds_bool
from appliance.rest.errors import HTTPFailure, error_response, failure_response, status_of
from appliance.rest.pacing import OverloadPacing
from appliance.rest.protocol import spelled
from appliance.tensors import (
    TensorSpec,
    bf16_to_float32,
    cast_in_range,
)

log = structlog.get_logger("aegis.vertex")
request_log = RequestLog("aegis.vertex")

# JSON values each datatype's kind takes: numbers for floats, integers for integers.
_FLOAT_KINDS = "iuf"
_INT_KINDS = "iu"


def _row(value: object, spec: TensorSpec, where: str) -> np.ndarray:
    """One instance's value for `spec`: an array shaped like a row of the input."""
    if spec.datatype == "BYTES":
        array = _bytes_row(value, where)
    else:
        try:
            parsed = np.asarray(value)
        except (ValueError, TypeError):
            raise InvalidInput(f"{where}: not a rectangular array of numbers") from None
        array = _typed(value, parsed, spec.datatype, where)
    row_shape = spec.shape[1:]
    if len(array.shape) != len(row_shape) or any(
        isinstance(want, int) and want != -1 and want != got
        for want, got in zip(row_shape, array.shape, strict=True)
    ):
        shape = [dim if isinstance(dim, int) else -1 for dim in row_shape]
        raise InvalidInput(
            f"{where}: has shape {list(array.shape)}, one instance of it is {shape} (-1: any size)"
        )
    return array


def _typed(value: object, parsed: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """`parsed` (numpy's reading of the JSON `value`) as `datatype`, or InvalidInput."""
    if datatype == "BOOL":
        if parsed.size and parsed.dtype.kind != "b":
            raise InvalidInput(f"{where}: BOOL values are true or false")
        return parsed.astype(np.bool_)
    accepted = _INT_KINDS if datatype.startswith(("INT", "UINT")) else _FLOAT_KINDS
    if parsed.size and parsed.dtype.kind not in accepted:
        kind = "integers" if accepted == _INT_KINDS else "numbers"
        raise InvalidInput(f"{where}: {datatype} values are {kind}")
    if parsed.size and holds_bool(value, parsed.ndim):
        # numpy reads [0.5, true] as [0.5, 1.0]: a value the client did not send.
        raise InvalidInput(f"{where}: mixes true/false with {datatype} numbers")
    converted = cast_in_range(parsed, datatype)
    if converted is None:
        raise InvalidInput(f"{where}: values out of range for {datatype}")
    return converted


def _bytes_row(value: object, where: str) -> np.ndarray:
    def element(item: object) -> bytes:
        if isinstance(item, str):
            return item.encode()
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except binascii.Error:
                raise InvalidInput(f"{where}: 'b64' is not valid base64") from None
        raise InvalidInput(f'{where}: BYTES values are strings or {{"b64": "..."}}')

    def nest(item: object) -> object:
        return [nest(part) for part in item] if isinstance(item, list) else element(item)

    nested = nest(value)
    shape: list[int] = []
    probe = nested
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat: list[bytes] = []
    stack = [nested]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)  # type: ignore[arg-type]
    if len(flat) != math.prod(shape):
        raise InvalidInput(f"{where}: not a rectangular array")
    array = np.empty(len(flat), dtype=np.object_)
    array[:] = flat
    return array.reshape(shape)


def decode_instances(instances: object, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """The model's inputs, one row per instance; InvalidInput naming the instance and input."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list")
    names = [spec.name for spec in inputs]
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if len(inputs) == 1:
            spec = inputs[0]
            rows[spec.name].append(_row(instance, spec, f"instance {index}: input {spec.name!r}"))
            continue
        if not isinstance(instance, dict):
            raise InvalidInput(
                f"instance {index}: must be an object keyed by input name ({', '.join(names)})"
            )
        for key in instance:
            if key not in rows:
                raise InvalidInput(
                    f"instance {index}: the model has no input {key!r} (inputs: {', '.join(names)})"
                )
        for spec in inputs:
            where = f"instance {index}: input {spec.name!r}"
            if spec.name not in instance:
                raise InvalidInput(f"{where} is missing")
            rows[spec.name].append(_row(instance[spec.name], spec, where))
    tensors = {}
    for spec in inputs:
        first = rows[spec.name][0].shape
        for index, row in enumerate(rows[spec.name]):
            if row.shape != first:
                raise InvalidInput(
                    f"instance {index}: input {spec.name!r} has shape {list(row.shape)}, "
                    f"instance 0 has {list(first)}: one request's instances must agree"
                )
        tensors[spec.name] = np.stack(rows[spec.name])
    return tensors


def _value(tensor: OutputTensor, row: np.ndarray) -> object:
    if tensor.datatype == "BYTES":
        return _bytes_json(row)
    if tensor.datatype == "BF16":
        row = bf16_to_float32(row)
    values = row.tolist()
    if row.dtype.kind == "f" and not np.isfinite(row).all():
        return _spell(values)
    return values


def _spell(values: Any) -> Any:
    if isinstance(values, list):
        return [_spell(value) for value in values]
    return values if math.isfinite(values) else spelled(values)


def _bytes_json(row: object) -> object:
    """A BYTES row as JSON: nested lists of text, `{"b64": ...}` where not UTF-8."""
    if isinstance(row, np.ndarray):
        return [_bytes_json(part) for part in row]
    data = row if isinstance(row, bytes) else str(row).encode()
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode()}


def predictions(outputs: list[OutputTensor], count: int) -> list[object]:
    if len(outputs) == 1:
        return [_value(outputs[0], outputs[0].data[index]) for index in range(count)]
    return [
        {tensor.name: _value(tensor, tensor.data[index]) for tensor in outputs}
        for index in range(count)
    ]


class PredictEndpoint:
    """`POST $AIP_PREDICT_ROUTE` for `model_name`, through the data plane."""

    def __init__(
        self,
        plane: DataPlane,
        model_name: str,
        max_request_bytes: int,
        access_log: AccessLogSampler,
        pacing: OverloadPacing,
        client_watches: ClientWatches,
    ) -> None:
        """`pacing`: the V2 door's, so that a refusal here lengthens Retry-After as one there
        does, and one there lengthens it here; `client_watches`: the V2 door's too, one timer
        for the requests of both."""
        self.plane = plane
        self.model_name = model_name
        self.max_request_bytes = max_request_bytes
        self.access_log = access_log
        self.pacing = pacing
        self.client_watches = client_watches

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        status = 200
        model = None
        fields: dict[str, object] = {}
        client = ClientWatch(request.receive, self.client_watches)
        try:
            model = self.plane.model(self.model_name)
            headers = {name: value for name, value in request.headers.raw}
            try:
                model.check_room()
            except QueueFull:
                # Read, not decoded: a body left unread would close the keep-alive connection.
                await client.read_raw_body(headers, self.max_request_bytes)
                raise
            body = await client.read_body(headers, self.max_request_bytes)
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                raise InvalidInput(f"request body is not valid JSON: {error}") from None
            if not isinstance(document, dict):
                raise InvalidInput("request body must be a JSON object")
            parameters = document.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidInput("'parameters' must be an object")
            inputs = decode_instances(document.get("instances"), model.signature.inputs)
            datatypes = {spec.name: spec.datatype for spec in model.signature.inputs}
            infer = InferRequest(
                model_name=model.name,
                model_version=model.version,
                inputs=inputs,
                datatypes=datatypes,
                parameters=parameters,
            )
            response = await client.infer(self.plane, infer, model)
            if response is None:
                status = CLIENT_CLOSED
                return Response(status_code=CLIENT_CLOSED)
            count = len(document["instances"])
            fields = {"instances": count, "batch_size": response.batch_size}
            payload = {"predictions": predictions(response.outputs, count)}
            return Response(
                orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                media_type="application/json",
            )
        except InferenceError as error:
            self.pacing.pace(error)  # a full queue, paced as the V2 door paces its refusals
            status = status_of(error)
            fields = {"error": str(error)}
            return failure_response(error)
        except HTTPFailure as error:  # 413, 415, a client gone mid-body
            status = error.status
            fields = {"error": str(error)}
            return failure_response(error)
        except Exception as error:
            log.error("unhandled_error", route="predict", exc_info=error)
            status = 500
            return error_response(500, "internal server error")
        finally:
            client.close()
            elapsed = time.perf_counter() - started
            if model is not None:
                model.metrics.observe_request(status, elapsed, "http")
            if self.access_log.wants(status):
                request_log.info(
                    {
                        "model": self.model_name,
                        "status": status,
                        "protocol": "http",
                        "duration_ms": round(elapsed * 1000, 3),
                        **fields,
                        "event": "predict",
                    }
                )
