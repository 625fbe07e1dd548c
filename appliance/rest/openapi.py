"""The OpenAPI 3.0 description of every endpoint, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed or mismatched input",
        401: "missing or wrong bearer token",
        403: "repository endpoints are off",
        404: "unknown model or version",
        413: "body too large",
        415: "unsupported Content-Encoding",
        500: "the model failed",
        503: "not ready, or queue full (see Retry-After)",
        504: "deadline passed",
    }
    return {str(status): _json(_ref("Error"), reasons[status]) for status in statuses}


_MODEL = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": _DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
    },
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": _DATATYPES},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {"type": "array", "items": _ref("RequestOutput")},
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": {}},
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": _ref("ResponseOutput")},
        },
    },
}


def _model_paths(prefix: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
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
                "responses": {"200": _json({"type": "object"}, "ready"), **_errors(404, 503)},
            }
        },
        prefix + "/config": {
            "get": {
                "summary": "Triton-style model configuration",
                "parameters": parameters,
                "responses": {"200": _json({"type": "object"}, "config"), **_errors(404, 503)},
            }
        },
        prefix + "/infer": {
            "post": {
                "summary": "Run inference (JSON, or binary tensors with "
                "Inference-Header-Content-Length)",
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("InferenceRequest")}},
                },
                "responses": {
                    "200": _json(_ref("InferenceResponse"), "outputs"),
                    **_errors(400, 404, 413, 415, 500, 503, 504),
                },
            }
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    plain = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    admin = {"security": [{"bearer": []}]}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": plain}}},
        "/v2/health/ready": {
            "get": {"summary": "Readiness", "responses": {"200": plain, **_errors(503)}}
        },
        "/healthz": {"get": {"summary": "Liveness (alias)", "responses": {"200": plain}}},
        "/readyz": {
            "get": {"summary": "Readiness (alias)", "responses": {"200": plain, **_errors(503)}}
        },
        "/v2": {"get": {"summary": "Server metadata", "responses": {"200": plain}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
            }
        },
        "/v2/repository/index": {
            "post": {
                "summary": "List model versions and their states",
                **admin,
                "responses": {
                    "200": _json({"type": "array", "items": {"type": "object"}}, "index"),
                    **_errors(401, 403),
                },
            }
        },
    }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "post": {
                "summary": f"{action.capitalize()} a model (re-sync and swap in, or remove)",
                **admin,
                "parameters": [_MODEL],
                "responses": {"200": plain, **_errors(400, 401, 403, 404, 503)},
            }
        }
    paths.update(_model_paths("/v2/models/{model_name}", [_MODEL]))
    paths.update(
        _model_paths("/v2/models/{model_name}/versions/{model_version}", [_MODEL, _VERSION])
    )
    return {
        "openapi": "3.0.3",
        "info": {"title": "Aegis inference appliance", "version": version},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
