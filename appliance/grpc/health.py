"""`grpc.health.v1.Health`: SERVING exactly when the readiness route answers 200."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The whole server (""), and the inference service by its full name, as probes ask for them.
SERVICES = ("", "inference.GRPCInferenceService")
# How often Watch looks at readiness again; readiness has no change events to wait on.
WATCH_PERIOD_S = 1.0


class Readiness(Protocol):
    def is_ready(self) -> bool: ...


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self._stopping = asyncio.Event()

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on, and every Watch ends: the server stops waiting for the calls
        in flight, and a Watch, which never ends by itself, would hold it to the end of its
        grace period."""
        self._stopping.set()

    def _status(self, service: str) -> Any:
        if service not in SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if self.readiness.is_ready() and not self._stopping.is_set():
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), WATCH_PERIOD_S)
