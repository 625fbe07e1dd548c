"""The Starlette application: Open Inference Protocol v2 routes, health, metrics and admin.

It sees models only through the data plane (numpy tensors in and out) and the lifecycle only
through the `Readiness` and `RepositoryControl` protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.dataplane import Readiness
from appliance.rest import admin, health, inference
from appliance.rest.context import AppContext
from appliance.rest.errors import error_response

log = structlog.get_logger("aegis.rest")

# How many infer paths `InferFirst` remembers the match of.
MATCHED_PATHS = 1024


def create_app(
    context: AppContext,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[Any]] | None = None,
    extra_routes: Sequence[Route] = (),
) -> ASGIApp:
    """The app; `extra_routes` (another front door's, such as Vertex AI's) go beside the V2 ones."""
    model = "/v2/models/{model_name:str}"
    version = model + "/versions/{model_version:str}"
    routes = [
        Route("/v2/health/live", health.live, methods=["GET"]),
        Route("/v2/health/ready", health.ready, methods=["GET"]),
        Route("/healthz", health.live, methods=["GET"]),
        Route("/readyz", health.ready, methods=["GET"]),
        Route("/v2", health.server_metadata, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", health.openapi, methods=["GET"]),
        Route("/v2/repository/index", admin.index, methods=["POST"]),
        Route("/v2/repository/models/{model_name:str}/load", admin.load, methods=["POST"]),
        Route("/v2/repository/models/{model_name:str}/unload", admin.unload, methods=["POST"]),
    ]
    # Starlette reaches these only for other methods (405 with Allow): InferFirst takes the POSTs.
    infer = inference.InferEndpoint(context)
    infer_routes = [
        Route(prefix + "/infer", infer, methods=["POST"]) for prefix in (model, version)
    ]
    for prefix in (model, version):
        routes += [
            Route(prefix, inference.model_metadata, methods=["GET"]),
            Route(prefix + "/ready", inference.model_ready, methods=["GET"]),
            Route(prefix + "/config", inference.model_config, methods=["GET"]),
        ]
    routes += infer_routes
    routes += extra_routes
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            404: _not_found,
            405: _method_not_allowed,
            Exception: _internal_error,
        },
    )
    app.state.aegis = context  # read back through appliance.rest.context.app_context
    return InferFirst(app, infer_routes, context.readiness)


class InferFirst:
    """Sends `POST .../infer` straight to its endpoint, everything else through Starlette.

    Starlette's middleware stack (two exception-handling layers, each wrapping `send`) and its
    router (a regex per route, in order) run on every call; infer calls, what the appliance is
    for, skip both and are served 5-7% faster per core at c=64 on the tiny model (A/B in
    bench/RESULTS.md). The endpoint answers its own errors, unexpected ones included.
    """

    def __init__(self, app: Starlette, infer_routes: list[Route], readiness: Readiness) -> None:
        self.app = app
        self.infer_routes = infer_routes
        self.readiness = readiness
        # Infer paths already matched, with their endpoint and path parameters: a client sends
        # the same few paths again and again, and a match costs a regex per route.
        self._matched: dict[str, tuple[ASGIApp, dict[str, Any]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.readiness.is_draining():
            send = _closing(send)
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            matched = self._matched.get(scope["path"]) or self._match(scope["path"])
            if matched is not None:
                endpoint, params = matched
                scope["app"] = self.app
                scope["path_params"] = dict(params)
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _match(self, path: str) -> tuple[ASGIApp, dict[str, Any]] | None:
        for route in self.infer_routes:
            # The route's own pattern and convertors: what Starlette's router would match.
            match = route.path_regex.match(path)
            if match is not None:
                params = {
                    name: route.param_convertors[name].convert(value)
                    for name, value in match.groupdict().items()
                }
                # Paths are the clients' to choose: only so many are remembered.
                if len(self._matched) < MATCHED_PATHS:
                    self._matched[path] = (route.endpoint, params)
                return route.endpoint, params
        return None


def _closing(send: Send) -> Send:
    """`send`, with `Connection: close` on the response: while the server drains, a keep-alive
    client closes its connection after this reply and opens its next one elsewhere, instead of
    sending it on a connection that is about to be closed under it."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value) for name, value in message.get("headers", []) if name != b"connection"
            ]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing_send


async def _not_found(request: Request, _exc: Exception) -> Response:
    return error_response(404, f"no endpoint {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    # RFC 9110: a 405 names the methods the resource supports; Starlette's router computed them.
    headers = dict(exc.headers) if isinstance(exc, HTTPException) and exc.headers else None
    return error_response(405, f"{request.method} is not allowed on {request.url.path}", headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The client gets no trace and no paths; the log gets both.
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return error_response(500, "internal server error")
