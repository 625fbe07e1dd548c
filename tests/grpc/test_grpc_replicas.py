"""Replicas: every serving process answers gRPC on the one shared port."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support.config import model_table
from tests.support.http import get_text
from tests.support.models import mlp_pt2

SERVED = re.compile(
    r'^aegis_inference_requests_total\{code="200",model="m",protocol="grpc",'
    r'replica="(\d+)",version="1"\} (\S+)$',
    re.MULTILINE,
)


def test_each_replica_serves_grpc_on_the_shared_port(serve, tmp_path: Path) -> None:
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
