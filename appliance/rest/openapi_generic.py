"""The parts of the OpenAPI document that are the same for every server, as data.

Component schemas, the fixed paths (health, server metadata, metrics, this document, the
repository endpoints) and error responses. The protocol's facts (datatypes, reserved parameters,
the spelling of non-finite floats, what each error status means) come from `protocol` and
`tensors`. `openapi` adds the model paths, generic and per served model.
"""

from __future__ import annotations

from typing import Any

from appliance.rest.protocol import ERROR_REASONS, SPELLED_FLOATS
from appliance.tensors import DATATYPE_TO_NUMPY

DATATYPES = sorted(DATATYPE_TO_NUMPY)
# orjson reads integers up to 2**64 - 1 as integers; larger ones become floats, which are refused.
_UINT64_MAX = 2**64 - 1


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Any]:
    responses = {}
    for status in statuses:
        response = json_content(ref("Error"), ERROR_REASONS[status])
        if status == 503:
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        elif status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


def parameters_object(**known: dict[str, Any]) -> dict[str, Any]:
    """A `parameters` object: `known` keys typed, any other key refused (the server implements
    each parameter it takes or answers 400; shared-memory ones among the refused).

    null is accepted wherever `parameters` is, and means no parameters.
    """
    return {"type": ["object", "null"], "properties": known, "additionalProperties": False}


MODEL_PARAMETER = {
    "name": "model_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
VERSION_PARAMETER = {
    "name": "model_version",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_OK = json_content({"type": "object"}, "ok")
SCHEMAS: dict[str, Any] = {
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
            "datatype": {"enum": DATATYPES},
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
            "inputs": {"type": "array", "items": ref("TensorMetadata")},
            "outputs": {"type": "array", "items": ref("TensorMetadata")},
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
            "input": {"type": "array", "items": ref("TritonTensorConfig")},
            "output": {"type": "array", "items": ref("TritonTensorConfig")},
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
    "RequestParameters": parameters_object(
        timeout={
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": _UINT64_MAX,
            "description": "deadline in microseconds; the model's timeout_ms caps it",
        },
        binary_data_output={"type": "boolean"},
        priority={"const": 0, "description": "only the default: one queue per model"},
    ),
    "InputParameters": parameters_object(
        binary_data_size={"type": ["integer", "null"], "minimum": 0}
    ),
    "OutputParameters": parameters_object(
        binary_data={"type": "boolean"},
        classification={
            "type": "integer",
            "minimum": 1,
            "description": "return the top K classes as BYTES 'value:index[:label]'",
        },
    ),
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"enum": DATATYPES},
            "parameters": ref("InputParameters"),
            "data": {"type": "array"},
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": ref("OutputParameters")},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": ref("RequestParameters"),
            "inputs": {"type": "array", "minItems": 1, "items": ref("RequestInput")},
            "outputs": {"type": ["array", "null"], "items": ref("RequestOutput")},
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"enum": DATATYPES},
            "parameters": {"type": "object"},
            "data": {
                "type": "array",
                "description": "flat, row-major; non-finite floats as the strings "
                + ", ".join(SPELLED_FLOATS),
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
            "outputs": {"type": "array", "items": ref("ResponseOutput")},
        },
    },
}


def _fixed_paths() -> dict[str, Any]:
    """Every path but the model ones."""
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
                "responses": {
                    "200": json_content(ref(schema), "ok"),
                    **(errors(503) if ready else {}),
                },
            }
        }
        for path, (summary, schema, ready) in health.items()
    }
    paths["/v2"] = {
        "get": {
            "summary": "Server metadata",
            "responses": {"200": json_content(ref("ServerMetadata"), "metadata")},
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
            "responses": {"200": json_content({"type": "object"}, "OpenAPI 3.1")},
        }
    }
    paths.update(_admin_paths())
    return paths


def _admin_paths() -> dict[str, Any]:
    admin: dict[str, Any] = {"security": [{"bearer": []}]}
    paths: dict[str, Any] = {
        "/v2/repository/index": {
            "post": {
                "summary": "List model versions and their states",
                **admin,
                "responses": {
                    "200": json_content(ref("RepositoryIndex"), "index"),
                    **errors(401, 403),
                },
            }
        }
    }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "post": {
                "summary": f"{action.capitalize()} a model (re-sync and swap in, or remove)",
                **admin,
                "parameters": [MODEL_PARAMETER],
                "responses": {"200": _OK, **errors(401, 403, 404, 500, 503)},
            }
        }
    return paths


FIXED_PATHS = _fixed_paths()
