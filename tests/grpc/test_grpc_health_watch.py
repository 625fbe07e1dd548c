"""`grpc.health.v1.Health/Watch` against the real server, through its whole life: starting,
serving, draining on SIGTERM, stopped."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.config import model_table, server_config
from tests.support.gcs import admin_client, emulator
from tests.support.proxy import FaultyProxy
from tests.support.server import start_server

BUCKET = "watched"
# Every wait of this test is on the next message of the stream, within this bound.
WATCH_DEADLINE_S = 120.0
Status = health_pb2.HealthCheckResponse
# Reconnect at once while the server is not yet listening (gRPC's default backoff waits 1 s+).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def test_watch_is_not_serving_while_starting_serving_once_warm_and_ends_not_serving_at_stop(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    with emulator() as url, FaultyProxy(url) as store:
        admin_client(url).create_bucket(BUCKET).blob("mlp.pt2").upload_from_filename(
            str(artifacts["mlp.pt2"])
        )
        # The store answers nothing until the stream has said NOT_SERVING: the server cannot
        # become ready before that, whatever this machine's speed.
        store.answering.clear()
        config = tmp_path / "aegis.toml"
        config.write_text(server_config(tmp_path, model_table("mlp", f"gs://{BUCKET}/mlp.pt2")))
        server = start_server(config, tmp_path / "server.log", {"STORAGE_EMULATOR_HOST": store.url})
        try:
            with grpc.insecure_channel(server.grpc_address, options=FAST_RECONNECT) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                stream = health.Watch(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=WATCH_DEADLINE_S,
                    wait_for_ready=True,  # the port opens once the process has imported
                )
                assert next(stream).status == Status.NOT_SERVING, server.log()
                assert server.status("/v2/health/ready") == 503
                store.answering.set()
                assert next(stream).status == Status.SERVING, server.log()
                assert server.status("/v2/health/ready") == 200
                assert server.status("/v2/models/mlp/ready") == 200
                server.process.send_signal(signal.SIGTERM)
                assert next(stream).status == Status.NOT_SERVING, server.log()
                # The server ends the stream as it stops (status OK). A stream left open would
                # hold the drain to the end of the grace period, then be cancelled (UNAVAILABLE).
                assert next(stream, None) is None
                assert server.process.wait(30) == 0, server.log()
        finally:
            server.stop()
