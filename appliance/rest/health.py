"""Liveness, readiness, server metadata, metrics and the OpenAPI document."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from appliance.rest.errors import error_response
from appliance.rest.openapi import openapi_document
from appliance.rest.responses import json_response

_EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    readiness = request.app.state.aegis.readiness
    if readiness.is_ready():
        return json_response({"ready": True})
    return error_response(503, f"not ready: {readiness.not_ready_reason()}", {"Retry-After": "1"})


async def server_metadata(request: Request) -> Response:
    settings = request.app.state.aegis.settings
    return json_response(
        {
            "name": settings.server_name,
            "version": settings.server_version,
            "extensions": _EXTENSIONS,
        }
    )


async def metrics(request: Request) -> Response:
    body = request.app.state.aegis.metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    context = request.app.state.aegis
    return json_response(openapi_document(context.settings.server_version, context.repository))
