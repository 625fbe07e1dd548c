"""The grpc.aio server: the inference and health services on `[server] grpc_bind`, in the event
loop that Hypercorn serves HTTP in, over the same data plane."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2_grpc

from appliance.grpc.health import Health, Readiness
from appliance.grpc.proto import inference_pb2_grpc as pb_grpc
from appliance.grpc.service import GrpcContext, InferenceService

log = structlog.get_logger("aegis.grpc")


class GrpcBindFailed(OSError):
    """A gRPC address could not be bound (in use, or not an address of this host)."""


def _credentials(certfile: str, keyfile: str) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(Path(keyfile).read_bytes(), Path(certfile).read_bytes())])


class GrpcServer:
    """Started with the app, stopped with it: `stop` refuses new calls at once and gives the
    ones in flight `grace_s` to finish, as Hypercorn does for HTTP requests; health Watch
    streams end at once, having said NOT_SERVING."""

    def __init__(
        self,
        context: GrpcContext,
        readiness: Readiness,
        binds: Sequence[str],
        max_message_bytes: int,
        tls: tuple[str, str] | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.binds = tuple(binds)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Replicas share the port (the kernel spreads connections between them); a single
            # process must fail to start on a port that another server holds, not share it.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(context), self.server)
        self.health = Health(readiness)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        credentials = _credentials(*tls) if tls else None
        for bind in self.binds:
            try:
                if credentials is None:
                    port = self.server.add_insecure_port(bind)
                else:
                    port = self.server.add_secure_port(bind, credentials)
            except RuntimeError as error:
                raise GrpcBindFailed(f"cannot listen for gRPC on {bind}: {error}") from None
            if port == 0:
                raise GrpcBindFailed(f"cannot listen for gRPC on {bind}")

    async def start(self) -> None:
        await self.server.start()
        log.info("grpc_serving", binds=list(self.binds))

    async def stop(self, grace_s: float) -> None:
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
