"""The OpenAPI 3.1 description of every endpoint, served at /openapi.json.

The generic paths (`/v2/models/{model_name}/...`) describe the protocol for any model name. Each
served model version also gets concrete paths whose infer body is its exact signature: input
names, datatypes, shapes, element counts and value ranges. A schema-driven fuzzer (schemathesis,
in tests/reliability) can then generate requests this server must accept, and mutations of them
it must refuse with a 4xx.

The binary tensor extension (a JSON header, then raw bytes) cannot be written as a JSON schema:
the infer operations describe it in words, and tests/reliability fuzzes it on its own.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

import numpy as np

from appliance.dataplane.metadata import protocol_shape
from appliance.repository import ModelRepository, ServedModel
from appliance.rest.openapi_generic import (
    FIXED_PATHS,
    MODEL_PARAMETER,
    SCHEMAS,
    VERSION_PARAMETER,
    errors,
    json_content,
    parameters_object,
    ref,
)
from appliance.tensors import DATATYPE_TO_NUMPY, TensorSpec

_BINARY_EXTENSION = (
    "Binary tensors (Triton's extension): send the header `Inference-Header-Content-Length: N`; "
    "the first N bytes of the body are this JSON document, with `parameters.binary_data_size` "
    "on each binary input instead of `data`, followed by the raw little-endian row-major tensors "
    "in input order (BYTES elements: a 4-byte little-endian length, then the bytes). The body "
    "may be gzip or deflate compressed (`Content-Encoding`). Binary outputs are asked for with "
    "`parameters.binary_data` on an output or `parameters.binary_data_output` on the request."
)


def _element(datatype: str) -> dict[str, Any] | None:
    """The JSON form of one element of `datatype`; None where JSON cannot carry it (BF16)."""
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string"}
    if datatype == "BF16":
        return None
    dtype = DATATYPE_TO_NUMPY[datatype]
    if dtype.kind == "f":
        if dtype.itemsize == 8:
            return {"type": "number"}  # a JSON number past float64 does not parse
        # Past half a step above the largest finite value, the cast would round to infinity.
        largest = np.finfo(dtype).max
        limit = float(largest) + float(largest - np.nextafter(largest, dtype.type(0))) / 2
        return {"type": "number", "exclusiveMinimum": -limit, "exclusiveMaximum": limit}
    info = np.iinfo(dtype)
    return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}


def _json_input(spec: TensorSpec, rows: int) -> dict[str, Any]:
    """One input sent as JSON `data` with `rows` batch rows."""
    element = _element(spec.datatype)
    assert element is not None
    inner = protocol_shape(spec)[1:]
    data: dict[str, Any] = {"type": "array", "items": element}
    if all(dim >= 0 for dim in inner):
        shape: dict[str, Any] = {"const": [rows, *inner]}
        data["minItems"] = data["maxItems"] = rows * math.prod(inner)
    else:
        # A variable inner dimension: the element count is the shape's product, which JSON
        # Schema cannot state.
        dims = [{"const": dim} if dim >= 0 else {"type": "integer", "minimum": 0} for dim in inner]
        shape = {
            "type": "array",
            "prefixItems": [{"const": rows}, *dims],
            "minItems": len(spec.shape),
            "maxItems": len(spec.shape),
        }
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": spec.datatype},
            "shape": shape,
            # null binary_data_size means none: the tensor is in `data`.
            "parameters": parameters_object(binary_data_size={"type": "null"}),
            "data": data,
        },
    }


def _request_schema(model: ServedModel) -> dict[str, Any]:
    """The JSON infer body `model` accepts: every input once, all with the same batch rows."""
    inputs = model.signature.inputs
    if any(_element(spec.datatype) is None for spec in inputs):
        return ref("InferenceRequest")
    first = protocol_shape(inputs[0])[0] if inputs and inputs[0].shape else -1
    rows = range(1, model.config.max_batch_size + 1) if first == -1 else [first]
    alternatives = [
        {
            "type": "array",
            "prefixItems": [_json_input(spec, count) for spec in inputs],
            "minItems": len(inputs),
            "maxItems": len(inputs),
        }
        for count in rows
    ]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": ref("RequestParameters"),
            "inputs": {"anyOf": alternatives},
            "outputs": {
                "type": ["array", "null"],
                "items": {"anyOf": [_requested_output(spec) for spec in model.signature.outputs]},
                # Each output at most once: a second entry would be refused (which hints hold?).
                "maxItems": len(model.signature.outputs),
                "allOf": [_at_most_once(spec.name) for spec in model.signature.outputs],
            },
        },
    }


def _at_most_once(name: str) -> dict[str, Any]:
    return {
        "contains": {
            "type": "object",
            "properties": {"name": {"const": name}},
            "required": ["name"],
        },
        "minContains": 0,
        "maxContains": 1,
    }


def _requested_output(spec: TensorSpec) -> dict[str, Any]:
    """An entry of `outputs` naming `spec`: classification up to its number of classes, where it
    has a fixed one."""
    known: dict[str, dict[str, Any]] = {"binary_data": {"type": "boolean"}}
    classes = spec.shape[-1] if len(spec.shape) >= 2 else None
    if spec.datatype != "BYTES" and isinstance(classes, int) and classes >= 1:
        known["classification"] = {"type": "integer", "minimum": 1, "maximum": classes}
    return {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"const": spec.name}, "parameters": parameters_object(**known)},
    }


def _infer_operation(parameters: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Run inference",
            "description": _BINARY_EXTENSION,
            "parameters": parameters,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {
                    "description": "outputs; binary when asked for",
                    "headers": {
                        "Inference-Header-Content-Length": {
                            "description": "length of the JSON header before binary outputs",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        },
                    },
                    "content": {
                        "application/json": {"schema": ref("InferenceResponse")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                **errors(400, 404, 413, 415, 500, 503, 504),
            },
        }
    }


def _model_paths(
    prefix: str, parameters: list[dict[str, Any]], body: dict[str, Any]
) -> dict[str, Any]:
    return {
        prefix: {
            "get": {
                "summary": "Model metadata",
                "parameters": parameters,
                "responses": {
                    "200": json_content(ref("ModelMetadata"), "metadata"),
                    **errors(404, 503),
                },
            }
        },
        prefix + "/ready": {
            "get": {
                "summary": "Model readiness",
                "parameters": parameters,
                "responses": {"200": json_content(ref("ModelReady"), "ready"), **errors(404, 503)},
            }
        },
        prefix + "/config": {
            "get": {
                "summary": "Triton-style model configuration",
                "parameters": parameters,
                "responses": {
                    "200": json_content(ref("ModelConfig"), "config"),
                    **errors(404, 503),
                },
            }
        },
        prefix + "/infer": _infer_operation(parameters, body),
    }


def _served_paths(repository: ModelRepository) -> tuple[dict[str, Any], dict[str, Any]]:
    """Concrete paths for each served version, and their request schemas by component name.

    The unversioned paths take the newest version, as the infer route does.
    """
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    refs: dict[tuple[str, str], dict[str, str]] = {}

    def body(model: ServedModel) -> dict[str, str]:
        key = (model.name, model.version)
        if key not in refs:
            # Model names may hold characters a component name must not: number them.
            component = f"InferenceRequest{len(refs) + 1}"
            schemas[component] = _request_schema(model)
            refs[key] = ref(component)
        return refs[key]

    for name in sorted({model.name for model in repository}):
        # Config allows any name without '/'; a path key must not hold `{`, `?`, `#` or spaces.
        prefix = f"/v2/models/{quote(name, safe='')}"
        for version in repository.versions(name):
            versioned = f"{prefix}/versions/{quote(version, safe='')}"
            paths.update(_model_paths(versioned, [], body(repository.get(name, version))))
        paths.update(_model_paths(prefix, [], body(repository.get(name))))
    return paths, schemas


def openapi_document(version: str, repository: ModelRepository | None = None) -> dict[str, Any]:
    """The document for a server of `version`, with concrete paths for `repository`'s models."""
    paths: dict[str, Any] = dict(FIXED_PATHS)
    generic = ref("InferenceRequest")
    model = "/v2/models/{model_name}"
    paths.update(_model_paths(model, [MODEL_PARAMETER], generic))
    paths.update(
        _model_paths(
            model + "/versions/{model_version}", [MODEL_PARAMETER, VERSION_PARAMETER], generic
        )
    )
    schemas = dict(SCHEMAS)
    if repository is not None:
        served, requests = _served_paths(repository)
        paths.update(served)
        schemas.update(requests)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Aegis inference appliance",
            "version": version,
            "description": "KServe Open Inference Protocol v2 with Triton's extensions. Every "
            'error is a non-2xx status with a JSON body {"error": "<what and why>"}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
