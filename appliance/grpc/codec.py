"""ModelInferRequest/ModelInferResponse messages <-> the data plane's requests and responses.

Tensors come as `raw_input_contents` (one little-endian, row-major entry per input, what
tritonclient always sends) or as the typed `contents` fields; a reply is raw when its request was,
and always for FP16 and BF16, which have no typed field. Raw tensors are decoded as read-only
views into the message's bytes (no copy); the batcher copies each request once, into its batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from appliance.dataplane import InferRequest, InferResponse, RequestedOutput
from appliance.errors import InvalidInput
from appliance.grpc.proto import inference_pb2 as pb
from appliance.tensors import DATATYPE_TO_NUMPY, cast_in_range, check_bool_bytes

# Parameters refused on a request, an input or an output, as over HTTP.
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_MAX_ELEMENTS = 2**48
_LENGTH_PREFIX = np.dtype("<u4")
# The typed field of each datatype, and the datatype that field carries: the narrow integers
# travel widened to 32 bits.
_CONTENTS = {
    "BOOL": ("bool_contents", "BOOL"),
    "UINT8": ("uint_contents", "UINT32"),
    "UINT16": ("uint_contents", "UINT32"),
    "UINT32": ("uint_contents", "UINT32"),
    "UINT64": ("uint64_contents", "UINT64"),
    "INT8": ("int_contents", "INT32"),
    "INT16": ("int_contents", "INT32"),
    "INT32": ("int_contents", "INT32"),
    "INT64": ("int64_contents", "INT64"),
    "FP32": ("fp32_contents", "FP32"),
    "FP64": ("fp64_contents", "FP64"),
    "BYTES": ("bytes_contents", "BYTES"),
}
_FIELDS = frozenset(field for field, _ in _CONTENTS.values())
_RAW_ONLY = ("FP16", "BF16")


def parameter_value(parameter: pb.InferParameter) -> object:
    """The Python value of an InferParameter, whichever of its kinds it holds."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _parameters(given: Mapping[str, pb.InferParameter], where: str) -> dict[str, object]:
    for reserved in _SHARED_MEMORY:
        if reserved in given:
            raise InvalidInput(f"{where}: shared-memory tensors are not supported ({reserved})")
    return {key: parameter_value(value) for key, value in given.items()}


def _little_endian(datatype: str) -> np.dtype:
    little: np.dtype = DATATYPE_TO_NUMPY[datatype].newbyteorder("<")
    return little


def _shape(dims: Iterable[int], where: str) -> tuple[int, ...]:
    shape = tuple(dims)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
    if math.prod(max(dim, 1) for dim in shape) > _MAX_ELEMENTS:
        raise InvalidInput(
            f"{where}: 'shape' {list(shape)} is larger than any tensor this server takes"
        )
    return shape


def _raw_tensor(raw: bytes, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _raw_bytes(memoryview(raw), count, where).reshape(shape)
    dtype = _little_endian(datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"raw_input_contents has {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        check_bool_bytes(array, where)
    return array


def _raw_bytes(chunk: memoryview, count: int, where: str) -> np.ndarray:
    elements: list[bytes] = []
    offset = 0
    size = chunk.nbytes
    while offset < size and len(elements) <= count:
        if offset + 4 > size:
            raise InvalidInput(f"{where}: BYTES element length prefix cut short")
        length = int(np.frombuffer(chunk[offset : offset + 4], dtype=_LENGTH_PREFIX)[0])
        offset += 4
        if offset + length > size:
            raise InvalidInput(f"{where}: BYTES element of {length} bytes runs past its tensor")
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInput(f"{where}: shape needs {count} BYTES elements, got {len(elements)}")
    array = np.empty(count, dtype=np.object_)
    array[:] = elements
    return array


def _typed_tensor(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    if datatype in _RAW_ONLY:
        raise InvalidInput(f"{where}: {datatype} tensors travel as raw_input_contents only")
    field, wire = _CONTENTS[datatype]
    for other in _FIELDS - {field}:
        if len(getattr(contents, other)):
            raise InvalidInput(f"{where}: a {datatype} tensor's data goes in {field}, not {other}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} elements, {field} has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.array(values, dtype=_little_endian(wire))
    converted = cast_in_range(wide, datatype)
    if converted is None:
        raise InvalidInput(f"{where}: {field} has values out of range for {datatype}")
    return converted.reshape(shape)


def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    """The data plane's request for `message`; InvalidInput naming the input for bad tensors.

    The request-level `timeout` parameter (microseconds, as over HTTP) becomes `timeout_us`.
    """
    parameters = _parameters(message.parameters, "request")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    input_parameters: dict[str, dict[str, object]] = {}
    for index, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
        where = f"input {tensor.name!r}"
        if tensor.name in inputs:
            raise InvalidInput(f"{where} is given twice")
        if tensor.datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(f"{where}: unknown datatype {tensor.datatype!r}")
        given = _parameters(tensor.parameters, where)
        # KServe's SDK marks each raw input with its size, as for HTTP's binary extension: like
        # the HTTP codec, this one takes the key out, once it agrees with the tensor's bytes.
        size = given.pop("binary_data_size", None)
        if given:
            input_parameters[tensor.name] = given
        shape = _shape(tensor.shape, where)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}: has both contents and raw_input_contents")
            if size is not None and (type(size) is not int or size != len(raw[index])):
                raise InvalidInput(
                    f"{where}: binary_data_size is {size!r}, its raw_input_contents entry has "
                    f"{len(raw[index])} bytes"
                )
            array = _raw_tensor(raw[index], tensor.datatype, shape, where)
        elif size is not None:
            raise InvalidInput(f"{where}: binary_data_size without raw_input_contents")
        else:
            array = _typed_tensor(tensor.contents, tensor.datatype, shape, where)
        inputs[tensor.name] = array
        datatypes[tensor.name] = tensor.datatype
    timeout_us = None
    if "timeout" in parameters:
        timeout = parameters.pop("timeout")
        if type(timeout) is not int or timeout <= 0:
            raise InvalidInput("'timeout' must be a positive integer (microseconds)")
        timeout_us = timeout
    outputs = None
    if message.outputs:
        outputs = []
        for requested in message.outputs:
            given = _parameters(requested.parameters, f"output {requested.name!r}")
            outputs.append(RequestedOutput(requested.name, binary=True, parameters=given))
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        inputs=inputs,
        datatypes=datatypes,
        id=message.id or None,
        parameters=parameters,
        outputs=outputs,
        binary_output=True,
        timeout_us=timeout_us,
        input_parameters=input_parameters,
    )


def _raw_payload(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        parts = []
        for element in array.reshape(-1):
            data = element if isinstance(element, bytes) else str(element).encode()
            parts.append(len(data).to_bytes(4, "little"))
            parts.append(data)
        return b"".join(parts)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def _fill_contents(contents: pb.InferTensorContents, datatype: str, array: np.ndarray) -> None:
    flat = array.reshape(-1)
    field, wire = _CONTENTS[datatype]
    values: Any = getattr(contents, field)
    if datatype == "BYTES":
        values.extend(e if isinstance(e, bytes) else str(e).encode() for e in flat)
    else:
        values.extend(flat.astype(_little_endian(wire), copy=False).tolist())


def encode_response(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """The reply message: tensors in raw_output_contents when `raw` (or any output has no typed
    field), else in each output's typed contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version
    )
    if response.id is not None:
        message.id = response.id
    raw = raw or any(tensor.datatype in _RAW_ONLY for tensor in response.outputs)
    for tensor in response.outputs:
        entry = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.data.shape)
        )
        if raw:
            message.raw_output_contents.append(_raw_payload(tensor.datatype, tensor.data))
        else:
            _fill_contents(entry.contents, tensor.datatype, tensor.data)
    return message
