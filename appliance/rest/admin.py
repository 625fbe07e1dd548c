"""Triton's model repository extension: index, load and unload, behind a bearer token."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from appliance.errors import InferenceError
from appliance.rest.context import request_context
from appliance.rest.errors import error_response, failure_response
from appliance.rest.responses import json_response


def _refusal(request: Request) -> Response | None:
    """None when the caller may use the repository endpoints, else the response to send."""
    context = request_context(request)
    token = context.settings.admin_token
    if not token or context.control is None:
        return error_response(
            403, "repository endpoints are off: set server.admin_token_file to enable them"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        return error_response(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    return None


async def index(request: Request) -> Response:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return json_response(request_context(request).plane.repository_index())


async def _change(request: Request, action: str) -> Response:
    """Run the lifecycle's `load` or `unload` for the model named in the path."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    control = request_context(request).control
    try:
        await getattr(control, action)(request.path_params["model_name"])
    except InferenceError as error:
        return failure_response(error)
    return json_response({})


async def load(request: Request) -> Response:
    return await _change(request, "load")


async def unload(request: Request) -> Response:
    return await _change(request, "unload")
