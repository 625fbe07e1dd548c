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

from appliance.repository import ModelRepository, ServedModel
from appliance.tensors import DATATYPE_TO_NUMPY, TensorSpec

_DATATYPES = sorted(DATATYPE_TO_NUMPY)
# Parameters the codec refuses: shared-memory tensors are not supported.
_RESERVED = ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"]
# orjson reads integers up to 2**64 - 1 as integers; larger ones become floats, which are refused.
_UINT64_MAX = 2**64 - 1
# The proto3 JSON spelling of non-finite floats, which JSON itself cannot carry.
_NON_FINITE = ["NaN", "Infinity", "-Infinity"]
_BINARY_EXTENSION = (
    "Binary tensors (Triton's extension): send the header `Inference-Header-Content-Length: N`; "
    "the first N bytes of the body are this JSON document, with `parameters.binary_data_size` "
    "on each binary input instead of `data`, followed by the raw little-endian row-major tensors "
    "in input order (BYTES elements: a 4-byte little-endian length, then the bytes). The body "
    "may be gzip or deflate compressed (`Content-Encoding`). Binary outputs are asked for with "
    "`parameters.binary_data` on an output or `parameters.binary_data_output` on the request."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REASONS = {
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


def _errors(*statuses: int) -> dict[str, Any]:
    responses = {}
    for status in statuses:
        response = _json(_ref("Error"), _REASONS[status])
        if status == 503:
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        elif status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


def _parameters_object(*refused: str, **known: dict[str, Any]) -> dict[str, Any]:
    """A `parameters` object: `known` keys typed, any other key free, `refused` keys refused.

    null is accepted wherever `parameters` is, and means no parameters.
    """
    schema: dict[str, Any] = {"type": ["object", "null"], "properties": known}
    if refused:
        schema["propertyNames"] = {"not": {"enum": list(refused)}}
    return schema


_MODEL = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
_OK = _json({"type": "object"}, "ok")

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Live": {
        "type": "object",
        "required": ["live"],
        "properties": {"live": {"const": True}},
    },
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"const": True}},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"enum": _DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "version", "ready"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "ready": {"const": True},
        },
    },
    "TritonTensorConfig": {
        "type": "object",
        "required": ["name", "data_type", "dims"],
        "properties": {
            "name": {"type": "string"},
            "data_type": {"type": "string", "pattern": "^TYPE_"},
            "dims": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        },
    },
    "ModelConfig": {
        "type": "object",
        "required": ["name", "platform", "max_batch_size", "input", "output"],
        "properties": {
            "name": {"type": "string"},
            "platform": {"type": "string"},
            "backend": {"type": "string"},
            "max_batch_size": {"type": "integer", "minimum": 1},
            "input": {"type": "array", "items": _ref("TritonTensorConfig")},
            "output": {"type": "array", "items": _ref("TritonTensorConfig")},
            "dynamic_batching": {"type": "object"},
            "instance_group": {"type": "array", "items": {"type": "object"}},
        },
    },
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "version", "state"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"enum": ["READY", "UNAVAILABLE", "LOADING"]},
            },
        },
    },
    "RequestParameters": _parameters_object(
        *_RESERVED,
        timeout={
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": _UINT64_MAX,
            "description": "deadline in microseconds; the model's timeout_ms caps it",
        },
        binary_data_output={"type": "boolean"},
    ),
    "InputParameters": _parameters_object(
        *_RESERVED, binary_data_size={"type": ["integer", "null"], "minimum": 0}
    ),
    "OutputParameters": _parameters_object(*_RESERVED, binary_data={"type": "boolean"}),
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"enum": _DATATYPES},
            "parameters": _ref("InputParameters"),
            "data": {"type": "array"},
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": _ref("OutputParameters")},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": _ref("RequestParameters"),
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {"type": ["array", "null"], "items": _ref("RequestOutput")},
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"enum": _DATATYPES},
            "parameters": {"type": "object"},
            "data": {
                "type": "array",
                "description": "flat, row-major; non-finite floats as the strings "
                + ", ".join(_NON_FINITE),
            },
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": _ref("ResponseOutput")},
        },
    },
}


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
        return {"type": "number"}
    info = np.iinfo(dtype)
    return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}


def _json_input(spec: TensorSpec, rows: int) -> dict[str, Any]:
    """One input sent as JSON `data` with `rows` batch rows."""
    element = _element(spec.datatype)
    assert element is not None
    inner = spec.shape[1:]
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
            "parameters": _parameters_object(*_RESERVED, binary_data_size={"type": "null"}),
            "data": data,
        },
    }


def _request_schema(model: ServedModel) -> dict[str, Any]:
    """The JSON infer body `model` accepts: every input once, all with the same batch rows."""
    inputs = model.signature.inputs
    if any(_element(spec.datatype) is None for spec in inputs):
        return _ref("InferenceRequest")
    first = inputs[0].shape[0] if inputs and inputs[0].shape else -1
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
    outputs = [spec.name for spec in model.signature.outputs]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": _ref("RequestParameters"),
            "inputs": {"anyOf": alternatives},
            "outputs": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"enum": outputs},
                        "parameters": _ref("OutputParameters"),
                    },
                },
            },
        },
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
                        "application/json": {"schema": _ref("InferenceResponse")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                **_errors(400, 404, 413, 415, 500, 503, 504),
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
                "responses": {"200": _json(_ref("ModelMetadata"), "metadata"), **_errors(404, 503)},
            }
        },
        prefix + "/ready": {
            "get": {
                "summary": "Model readiness",
                "parameters": parameters,
                "responses": {"200": _json(_ref("ModelReady"), "ready"), **_errors(404, 503)},
            }
        },
        prefix + "/config": {
            "get": {
                "summary": "Triton-style model configuration",
                "parameters": parameters,
                "responses": {"200": _json(_ref("ModelConfig"), "config"), **_errors(404, 503)},
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
            refs[key] = _ref(component)
        return refs[key]

    for name in sorted({model.name for model in repository}):
        # Config allows any name without '/'; a path key must not hold `{`, `?`, `#` or spaces.
        prefix = f"/v2/models/{quote(name, safe='')}"
        for version in repository.versions(name):
            versioned = f"{prefix}/versions/{quote(version, safe='')}"
            paths.update(_model_paths(versioned, [], body(repository.get(name, version))))
        paths.update(_model_paths(prefix, [], body(repository.get(name))))
    return paths, schemas


def _admin_paths() -> dict[str, Any]:
    admin: dict[str, Any] = {"security": [{"bearer": []}]}
    paths: dict[str, Any] = {
        "/v2/repository/index": {
            "post": {
                "summary": "List model versions and their states",
                **admin,
                "responses": {
                    "200": _json(_ref("RepositoryIndex"), "index"),
                    **_errors(401, 403),
                },
            }
        }
    }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "post": {
                "summary": f"{action.capitalize()} a model (re-sync and swap in, or remove)",
                **admin,
                "parameters": [_MODEL],
                "responses": {"200": _OK, **_errors(401, 403, 404, 500, 503)},
            }
        }
    return paths


def openapi_document(version: str, repository: ModelRepository | None = None) -> dict[str, Any]:
    """The document for a server of `version`, with concrete paths for `repository`'s models."""
    health = {
        "/v2/health/live": ("Liveness", "Live", False),
        "/healthz": ("Liveness (alias)", "Live", False),
        "/v2/health/ready": ("Readiness: 200 once every model is loaded and warm", "Ready", True),
        "/readyz": ("Readiness (alias)", "Ready", True),
    }
    paths: dict[str, Any] = {
        path: {
            "get": {
                "summary": summary,
                "responses": {"200": _json(_ref(schema), "ok"), **(_errors(503) if ready else {})},
            }
        }
        for path, (summary, schema, ready) in health.items()
    }
    paths["/v2"] = {
        "get": {
            "summary": "Server metadata",
            "responses": {"200": _json(_ref("ServerMetadata"), "metadata")},
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        }
    }
    paths.update(_admin_paths())
    generic = _ref("InferenceRequest")
    model = "/v2/models/{model_name}"
    paths.update(_model_paths(model, [_MODEL], generic))
    paths.update(_model_paths(model + "/versions/{model_version}", [_MODEL, _VERSION], generic))
    schemas = dict(_SCHEMAS)
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
