"""`inference.GRPCInferenceService`: the Open Inference Protocol's RPCs on the data plane.

Every answer is the one the HTTP routes give, in the protocol's messages: the same facts
(metadata, config, readiness, repository index), the same infer path (`DataPlane.infer`, so both
protocols share the batches) and the same error messages, as gRPC status codes.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog

from appliance.dataplane import DataPlane
from appliance.errors import InferenceError, ModelNotReady, QueueFull
from appliance.grpc.access import Outcome, record
from appliance.grpc.codec import decode_request, encode_response
from appliance.grpc.errors import RpcFailure, status_of
from appliance.grpc.proto import inference_pb2 as pb
from appliance.grpc.proto import inference_pb2_grpc as pb_grpc
from appliance.grpc.statistics import model_statistics, statistics
from appliance.metrics import Metrics
from appliance.rest.access import AccessLogSampler, request_id_of
from appliance.rest.pacing import OverloadPacing

log = structlog.get_logger("aegis.grpc")

# The extension only this transport implements; the data plane names the others.
GRPC_EXTENSIONS = ["statistics"]


class RepositoryControl(Protocol):
    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


@dataclass(frozen=True)
class GrpcContext:
    """What every RPC may use."""

    plane: DataPlane
    metrics: Metrics
    control: RepositoryControl | None
    admin_token: str | None
    access_log: AccessLogSampler = field(default_factory=AccessLogSampler)
    # The HTTP door's, so that refusals on either lengthen the wait both announce.
    pacing: OverloadPacing = field(default_factory=OverloadPacing)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None


# gRPC's server pushback (the retry design, A6): a client whose retry policy covers UNAVAILABLE
# waits this many milliseconds before it tries again, as an HTTP client waits Retry-After.
PUSHBACK = "grpc-retry-pushback-ms"


async def _abort(context: grpc.aio.ServicerContext, error: InferenceError | RpcFailure) -> None:
    code, message = status_of(error)
    pushback: tuple[tuple[str, str], ...] = ()
    if isinstance(error, QueueFull):
        pushback = ((PUSHBACK, str(error.retry_after_s * 1000)),)
    await context.abort(code, message, pushback)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, shared: GrpcContext) -> None:
        self.shared = shared
        self.plane = shared.plane

    # Health and metadata

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            ready = self.plane.model_ready(request.name, request.version or None)
        except ModelNotReady:
            ready = False
        except InferenceError as error:
            await _abort(context, error)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        facts = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=facts["name"],
            version=facts["version"],
            extensions=GRPC_EXTENSIONS + facts["extensions"],
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            facts = self.plane.model_metadata(request.name, request.version or None)
        except InferenceError as error:
            await _abort(context, error)
        reply = pb.ModelMetadataResponse(
            name=facts["name"], versions=facts["versions"], platform=facts["platform"]
        )
        for tensors, specs in ((reply.inputs, facts["inputs"]), (reply.outputs, facts["outputs"])):
            for spec in specs:
                tensors.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        return reply

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        try:
            facts = self.plane.model_config(request.name, request.version or None)
        except InferenceError as error:
            await _abort(context, error)
        config = pb.ModelConfig(
            name=facts["name"],
            platform=facts["platform"],
            backend=facts["backend"],
            max_batch_size=facts["max_batch_size"],
        )
        for tensor in facts["input"]:
            config.input.add(
                name=tensor["name"],
                data_type=pb.DataType.Value(tensor["data_type"]),
                dims=tensor["dims"],
            )
        for tensor in facts["output"]:
            config.output.add(
                name=tensor["name"],
                data_type=pb.DataType.Value(tensor["data_type"]),
                dims=tensor["dims"],
            )
        batching = facts["dynamic_batching"]
        config.dynamic_batching.preferred_batch_size.extend(batching["preferred_batch_size"])
        config.dynamic_batching.max_queue_delay_microseconds = batching[
            "max_queue_delay_microseconds"
        ]
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        metrics = self.shared.metrics
        if not request.name:
            return statistics(metrics, self.plane.repository)
        try:
            model = self.plane.model(request.name, request.version or None)
        except InferenceError as error:
            await _abort(context, error)
        return pb.ModelStatisticsResponse(model_stats=[model_statistics(metrics, model)])

    # Repository (behind the admin token, as over HTTP)

    async def _authorize(self, context: grpc.aio.ServicerContext) -> RepositoryControl:
        token = self.shared.admin_token
        control = self.shared.control
        if not token or control is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "repository endpoints are off: set server.admin_token_file to enable them",
            )
        assert token is not None and control is not None  # abort raised otherwise
        scheme, _, given = (_metadata(context, "authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        return control

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        await self._authorize(context)
        reply = pb.RepositoryIndexResponse()
        for row in self.plane.repository_index():
            if request.ready and row["state"] != "READY":
                continue
            reply.models.add(name=row["name"], version=row["version"], state=row["state"])
        return reply

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        control = await self._authorize(context)
        try:
            await control.load(request.model_name)
        except InferenceError as error:
            await _abort(context, error)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        control = await self._authorize(context)
        try:
            await control.unload(request.model_name)
        except InferenceError as error:
            await _abort(context, error)
        return pb.RepositoryModelUnloadResponse()

    # Inference

    async def _infer(
        self, message: pb.ModelInferRequest, context: grpc.aio.ServicerContext, rpc: str
    ) -> pb.ModelInferResponse:
        """One request through the data plane; raises InferenceError or RpcFailure."""
        started = time.perf_counter()
        request_id = request_id_of(_metadata(context, "x-request-id") or message.id or None)
        outcome = Outcome(message.model_name)
        try:
            # Looked up apart from the room check: a refused request is still counted on its
            # model. At the door: under overload the refusal is the common answer, and it must
            # not cost a decode.
            model = outcome.model = self.plane.model(
                message.model_name, message.model_version or None
            )
            model.check_room()
            request = decode_request(message)
            remaining = context.time_remaining()
            if remaining is not None:
                # The client's deadline is the request's (the tighter of it and `timeout`).
                deadline_us = max(int(remaining * 1_000_000), 1)
                request.timeout_us = min(request.timeout_us or deadline_us, deadline_us)
            response = await self.plane.infer(request, model)
            outcome.fields = {
                "batch_size": response.batch_size,
                "batch": response.batch,
                "queue_ms": round(response.queue_s * 1000, 3),
                "compute_ms": round(response.compute_s * 1000, 3),
            }
            if response.fallback is not None:
                outcome.fields["cpu_fallback"] = response.fallback
            return encode_response(response, raw=bool(message.raw_input_contents))
        except (InferenceError, RpcFailure) as error:
            self.shared.pacing.pace(error)  # a full queue, paced as the HTTP doors pace theirs
            outcome.code, outcome.fields["error"] = status_of(error)
            raise
        except asyncio.CancelledError:
            outcome.code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            outcome.code = grpc.StatusCode.INTERNAL
            raise
        finally:
            elapsed = time.perf_counter() - started
            record(outcome, request_id, elapsed, self.shared.access_log, rpc)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request, context, "ModelInfer")
        except (InferenceError, RpcFailure) as error:
            await _abort(context, error)
        except Exception as error:
            # A bug of ours: the client gets no trace, the log gets it.
            log.error("unhandled_error", rpc="ModelInfer", exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        raise AssertionError("context.abort returned")

    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream runs as it arrives (they batch together, and with every
        other client's); replies go back as they are ready, matched by `id` as Triton's are.
        A failed request gets its error in the reply and the stream goes on. When the client
        cancels the stream, the requests still waiting leave their queues."""
        replies: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(message: pb.ModelInferRequest) -> None:
            try:
                reply = pb.ModelStreamInferResponse(
                    infer_response=await self._infer(message, context, "ModelStreamInfer")
                )
            except (InferenceError, RpcFailure) as error:
                _, text = status_of(error)
                reply = pb.ModelStreamInferResponse(
                    error_message=text,
                    infer_response=pb.ModelInferResponse(
                        model_name=message.model_name,
                        model_version=message.model_version,
                        id=message.id,
                    ),
                )
            except Exception as error:
                log.error("unhandled_error", rpc="ModelStreamInfer", exc_info=error)
                reply = pb.ModelStreamInferResponse(error_message="internal server error")
            await replies.put(reply)

        async def read() -> None:
            async for message in requests:
                task = asyncio.get_running_loop().create_task(one(message))
                running.add(task)
                task.add_done_callback(running.discard)
            # The client is done sending: the stream ends once every reply is out.
            await asyncio.gather(*running, return_exceptions=True)
            await replies.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)
