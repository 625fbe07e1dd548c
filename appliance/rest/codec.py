"""Open Inference Protocol v2 bodies <-> numpy, JSON tensors and Triton's binary tensor extension.

Binary tensors are decoded as read-only views into the request body (no copy); the batcher copies
each request once, into its padded batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import orjson

from appliance.dataplane.types import InferRequest, OutputTensor, RequestedOutput
from appliance.errors import InvalidInput
from appliance.rest.protocol import RESERVED_PARAMETERS, SPELLED_FLOATS, spelled
from appliance.tensors import DATATYPE_TO_NUMPY, cast_in_range, check_bool_bytes

# JSON data of these datatypes must parse to one of these numpy kinds. JSON has one number type:
# 3.0 is the integer 3 (as JSON Schema says), so integer tensors take whole-valued floats too.
_ACCEPTED_KINDS = {"b": "b", "u": "iuf", "i": "iuf", "f": "iuf"}
_LENGTH_PREFIX = np.dtype("<u4")
# Floats spell every integer exactly up to here; past it 2.0**63 may stand for 2**63 - 1 or 2**63.
_EXACT_FLOAT_INT = 2**53
_MAX_ELEMENTS = 2**48
*_OTHER_SPELLINGS, _LAST_SPELLING = (f'"{name}"' for name in SPELLED_FLOATS)
# What a float tensor's JSON data may hold: '(numbers, "NaN", "Infinity" or "-Infinity")'.
_FLOAT_VALUES = f"(numbers, {', '.join(_OTHER_SPELLINGS)} or {_LAST_SPELLING})"


# Each datatype's numpy dtype in the wire's byte order (little-endian), made once.
_LITTLE_ENDIAN: dict[str, np.dtype] = {
    datatype: dtype.newbyteorder("<") for datatype, dtype in DATATYPE_TO_NUMPY.items()
}


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    for reserved in RESERVED_PARAMETERS:
        if reserved in value:
            raise InvalidInput(f"{where}: shared-memory tensors are not supported ({reserved})")
    return value


def _as_int(value: object) -> int | None:
    """`value` as an integer where JSON spelled one, as 3 or 3.0 (JSON has one number type and
    JSON Schema counts 3.0 as an integer); None for anything else, booleans included."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
        return int(value)
    return None


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
    dims = []
    elements = 1  # of the array were its empty dimensions of size 1
    for item in value:
        dim = item if type(item) is int else _as_int(item)
        if dim is None or dim < 0:
            raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
        dims.append(dim)
        elements *= dim or 1
    # numpy refuses to even describe a larger array, empty or not; no body could fill one.
    if elements > _MAX_ELEMENTS:
        raise InvalidInput(f"{where}: 'shape' {dims} is larger than any tensor this server takes")
    return tuple(dims)


def holds_bool(data: object, depth: int) -> bool:
    """Whether `data`, lists nested `depth` deep as numpy read them, holds a JSON true or false.

    numpy reads [false, 2.5] as [0.0, 2.5], so the booleans can only be found in the JSON values.
    """
    if depth == 0:
        return type(data) is bool
    leaves: Iterable[object] = data  # type: ignore[assignment]
    for _ in range(depth - 1):
        leaves = itertools.chain.from_iterable(leaves)  # type: ignore[arg-type]
    return bool in set(map(type, leaves))


def _json_tensor(data: object, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten_bytes(data, where)
        if len(flat) != count:
            raise InvalidInput(
                f"{where}: shape {list(shape)} needs {count} elements, got {len(flat)}"
            )
        array = np.empty(count, dtype=np.object_)
        array[:] = flat
        return array.reshape(shape)
    if datatype == "BF16":
        raise InvalidInput(f"{where}: BF16 tensors travel as binary data only")
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"{where}: 'data' is not a rectangular array of numbers") from None
    if parsed.size != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} elements, 'data' has {parsed.size}"
        )
    target = _LITTLE_ENDIAN[datatype]
    if count == 0:
        # numpy reads [] as floats, whatever the datatype: an empty tensor has no values to check.
        return np.empty(shape, dtype=target)
    if target.kind == "f" and parsed.dtype.kind in "UO":
        # Replies spell NaN and the infinities as strings (`protocol.spelled`): a client may send
        # back what it was given.
        return _floats_spelled(data, target, datatype, where).reshape(shape)
    if parsed.size and parsed.dtype.kind not in _ACCEPTED_KINDS[target.kind]:
        raise InvalidInput(f"{where}: 'data' holds {_kind_name(parsed)}, not {datatype} values")
    if parsed.size and target.kind != "b" and holds_bool(data, parsed.ndim):
        raise InvalidInput(f"{where}: 'data' mixes true/false with numbers")
    if target.kind in "iu" and parsed.dtype.kind == "f":
        # Whole numbers spelled as floats (3.0), perhaps beside integers a float cannot hold:
        # numpy made them all floats, so read each value exactly from the JSON instead.
        return _whole_numbers(np.array(data, dtype=object), target, datatype, where).reshape(shape)
    converted = cast_in_range(parsed, datatype)
    if converted is None:
        raise InvalidInput(f"{where}: 'data' has values out of range for {datatype}")
    return converted.reshape(shape)


def _whole_numbers(values: np.ndarray, target: np.dtype, datatype: str, where: str) -> np.ndarray:
    exact = [_as_int(value) for value in values.reshape(-1)]
    if None in exact:
        raise InvalidInput(f"{where}: 'data' holds floating-point numbers, not {datatype} values")
    whole = cast("list[int]", exact)  # no None left, checked above
    info = np.iinfo(target)
    if min(whole) < info.min or max(whole) > info.max:
        raise InvalidInput(f"{where}: 'data' has values out of range for {datatype}")
    return np.array(whole, dtype=target)


def _floats_spelled(data: object, target: np.dtype, datatype: str, where: str) -> np.ndarray:
    """Numbers beside "NaN", "Infinity" and "-Infinity", as `target` floats."""
    values = np.array(data, dtype=object).reshape(-1)
    floats = np.empty(values.size, dtype=np.float64)
    for index, value in enumerate(values):
        if isinstance(value, str):
            if value not in SPELLED_FLOATS:
                raise InvalidInput(
                    f"{where}: 'data' holds the string {value[:40]!r}, not {datatype} values "
                    + _FLOAT_VALUES
                )
            floats[index] = SPELLED_FLOATS[value]
        elif type(value) in (int, float):  # the JSON parser holds integers to 64 bits
            floats[index] = value
        else:
            raise InvalidInput(f"{where}: 'data' mixes true/false or null with numbers")
    # Infinity as spelled passes; a number the type cannot hold does not become one.
    converted = cast_in_range(floats, datatype)
    if converted is None:
        raise InvalidInput(f"{where}: 'data' has values out of range for {datatype}")
    return converted


def _kind_name(array: np.ndarray) -> str:
    return {
        "b": "booleans",
        "f": "floating-point numbers",
        "i": "integers",
        "u": "integers",
        "U": "strings",
        "O": "mixed values",
    }.get(array.dtype.kind, str(array.dtype))


def _flatten_bytes(data: object, where: str) -> list[bytes]:
    flat: list[bytes] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item.encode())
        else:
            raise InvalidInput(f"{where}: BYTES data must be strings")
    return flat


def _binary_tensor(
    chunk: memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _binary_bytes(chunk, count, where).reshape(shape)
    dtype = _LITTLE_ENDIAN[datatype]
    if chunk.nbytes != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {chunk.nbytes}"
        )
    array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        check_bool_bytes(array, where)
    return array


def _binary_bytes(chunk: memoryview, count: int, where: str) -> np.ndarray:
    elements = []
    offset = 0
    size = chunk.nbytes
    while offset < size:
        if offset + 4 > size:
            raise InvalidInput(f"{where}: BYTES element length prefix cut short")
        (length,) = np.frombuffer(chunk[offset : offset + 4], dtype=_LENGTH_PREFIX)
        offset += 4
        if offset + int(length) > size:
            raise InvalidInput(f"{where}: BYTES element of {length} bytes runs past its tensor")
        elements.append(bytes(chunk[offset : offset + int(length)]))
        offset += int(length)
        if len(elements) > count:
            break
    if len(elements) != count:
        raise InvalidInput(f"{where}: shape needs {count} BYTES elements, got {len(elements)}")
    array = np.empty(count, dtype=np.object_)
    array[:] = elements
    return array


def decode_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str | None
) -> InferRequest:
    """Parse an infer request body for the model (and version) named in its path;
    `header_length` is the binary extension's header, if sent.

    The binary extension's parameters (binary_data_size, binary_data, binary_data_output) and
    `timeout` are taken out here; every other parameter goes to the data plane as sent.
    """
    header: bytes | memoryview
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length}, "
                f"but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    parameters = dict(_parameters(document.get("parameters"), "request"))
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    input_parameters: dict[str, dict[str, object]] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInput(f"inputs[{index}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
        where = f"input {name!r}"
        if name in inputs:
            raise InvalidInput(f"{where} is given twice")
        datatype = raw.get("datatype")
        # A list or object here is unhashable: test the type before the dict lookup.
        if not isinstance(datatype, str) or datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(f"{where}: unknown datatype {datatype!r}")
        shape = _shape(raw.get("shape"), where)
        given = _parameters(raw.get("parameters"), where)
        given_size = given.get("binary_data_size")
        if len(given) > (given_size is not None):  # more than the binary extension's own
            input_parameters[name] = {
                key: value for key, value in given.items() if key != "binary_data_size"
            }
        if given_size is not None:
            if "data" in raw:
                raise InvalidInput(f"{where}: has both 'data' and binary_data_size")
            size = _as_int(given_size)
            if size is None or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > binary.nbytes:
                raise InvalidInput(
                    f"{where}: binary_data_size {size} runs past the body "
                    f"({binary.nbytes - offset} binary bytes left)"
                )
            array = _binary_tensor(binary[offset : offset + size], datatype, shape, where)
            offset += size
        elif "data" in raw:
            array = _json_tensor(raw["data"], datatype, shape, where)
        else:
            raise InvalidInput(f"{where}: has neither 'data' nor binary_data_size")
        inputs[name] = array
        datatypes[name] = datatype
    if offset != binary.nbytes:
        raise InvalidInput(
            f"{binary.nbytes - offset} bytes of binary data follow the last tensor; "
            "binary_data_size values do not add up to the body"
        )
    binary_output = parameters.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput("'binary_data_output' must be true or false")
    outputs = _requested_outputs(document.get("outputs"), binary_output)
    given_timeout = parameters.pop("timeout", None)
    timeout = None if given_timeout is None else _as_int(given_timeout)
    if given_timeout is not None and (timeout is None or timeout <= 0):
        raise InvalidInput("'timeout' must be a positive integer (microseconds)")
    return InferRequest(
        model_name,
        model_version,
        inputs,
        datatypes,
        request_id,
        parameters,
        outputs,
        binary_output,
        timeout,
        input_parameters,
    )


def _requested_outputs(raw: object, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a 'name'")
        parameters = dict(_parameters(item.get("parameters"), f"output {item['name']!r}"))
        binary = parameters.pop("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {item['name']!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(item["name"], binary, parameters))
    return outputs


def _bytes_payload(array: np.ndarray) -> bytes:
    parts = []
    for element in array.reshape(-1):
        raw = element if isinstance(element, bytes) else str(element).encode()
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def _json_data(tensor: OutputTensor) -> object:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [
            element.decode("utf-8", "replace") if isinstance(element, bytes) else str(element)
            for element in flat
        ]
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        # JSON has no NaN or infinity, and orjson writes them as null: the value is lost and NaN,
        # inf and -inf look alike. Spell them as the proto3 JSON mapping (KServe's gRPC protocol
        # in JSON) does; numpy, and so tritonclient's as_numpy, read these strings back.
        return [value if math.isfinite(value) else spelled(value) for value in flat.tolist()]
    return np.ascontiguousarray(flat)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary."""
    described = []
    chunks: list[bytes] = []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if tensor.binary or tensor.datatype == "BF16":
            if tensor.datatype == "BYTES":
                payload = _bytes_payload(tensor.data)
            else:
                array = tensor.data.astype(tensor.data.dtype.newbyteorder("<"), copy=False)
                payload = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(payload)}
            chunks.append(payload)
        else:
            entry["data"] = _json_data(tensor)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = described
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)
