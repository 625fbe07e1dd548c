"""The gRPC port: shared by the replicas of one server, never with another server or with HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.conftest import ServerFactory
from tests.support.config import model_table, server_config
from tests.support.http import free_port, get_text
from tests.support.models import mlp_pt2
from tests.support.server import start_server

SERVED = re.compile(
    r'^aegis_inference_requests_total\{code="200",model="m",protocol="grpc",'
    r'replica="(\d+)",version="1"\} (\S+)$',
    re.MULTILINE,
)


def test_each_replica_serves_grpc_on_the_shared_port(serve: ServerFactory, tmp_path: Path) -> None:
    model = mlp_pt2(tmp_path / "m.pt2")
    server = serve(model_table("m", model, "max_batch_size = 8"), "replicas = 2")
    x = grpcclient.InferInput("x", [1, 8], "FP32")
    x.set_data_from_numpy(np.ones((1, 8), np.float32))
    # A connection each: the kernel spreads connections, not calls, between the replicas.
    for _ in range(32):
        client = grpcclient.InferenceServerClient(server.grpc_address)
        try:
            assert client.infer("m", [x]).as_numpy("output__0").shape == (1, 3)
        finally:
            client.close()
    served = {
        replica: float(count)
        for replica, count in SERVED.findall(get_text(server, "/metrics", timeout_s=10))
    }
    assert set(served) == {"0", "1"}, served
    assert sum(served.values()) == 32


def test_a_grpc_port_held_by_another_server_fails_the_start(
    serve: ServerFactory, tmp_path: Path
) -> None:
    model = mlp_pt2(tmp_path / "m.pt2")
    first = serve(model_table("m", model))
    config = tmp_path / "second.toml"
    config.write_text(server_config(tmp_path / "second", model_table("m", model)))
    second = start_server(config, tmp_path / "second.log", grpc_port=first.grpc_port)
    try:
        assert second.process.wait(60) == 1
        assert f"cannot listen for gRPC on 127.0.0.1:{first.grpc_port}" in second.log()
    finally:
        second.stop()
    assert first.status("/v2/health/ready") == 200


def test_an_http_port_from_the_command_line_on_the_grpc_port_is_refused_as_config(
    tmp_path: Path,
) -> None:
    """`--bind` is checked against the file's grpc_bind as the file's own bind is: exit 2 naming
    both addresses, before anything binds (it was a traceback from the HTTP listener)."""
    port = free_port()
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, "", f'grpc_bind = ["127.0.0.1:{port}"]'))
    server = start_server(config, tmp_path / "server.log", grpc=False, port=port)
    try:
        assert server.process.wait(60) == 2
        log = server.log()
    finally:
        server.stop()
    assert (
        f"invalid configuration: {config}: server.grpc_bind: '127.0.0.1:{port}' takes the port"
        f" of bind '127.0.0.1:{port}'"
    ) in log, log
    assert "Traceback" not in log
