"""Liveness, readiness, server metadata, metrics and the OpenAPI document."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from appliance.dataplane import DataPlane
from appliance.rest.context import request_context
from appliance.rest.errors import error_response
from appliance.rest.openapi import openapi_document
from appliance.rest.responses import json_response

# The extension only this transport implements; the data plane names the others.
_HTTP_EXTENSIONS = ["binary_tensor_data"]


def _plane(request: Request) -> DataPlane:
    return request_context(request).plane


async def live(request: Request) -> Response:
    return json_response({"live": _plane(request).live()})


async def ready(request: Request) -> Response:
    plane = _plane(request)
    if plane.ready():
        return json_response({"ready": True})
    return error_response(503, f"not ready: {plane.not_ready_reason()}", {"Retry-After": "1"})


async def server_metadata(request: Request) -> Response:
    document = _plane(request).server_metadata()
    document["extensions"] = _HTTP_EXTENSIONS + document["extensions"]
    return json_response(document)


async def metrics(request: Request) -> Response:
    body = request_context(request).metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    context = request_context(request)
    return json_response(openapi_document(context.settings.server_version, context.repository))
