"""`aegis demo` exports the built-in model at first start and serves it on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from appliance.demo import DEMO_INPUTS, build_demo_module
from tests.support.http import call, free_port
from tests.support.server import ServerProcess


def test_demo_serves_the_built_in_model(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "appliance", "demo", "--bind", f"127.0.0.1:{port}"),
                *("--grpc-bind", f"127.0.0.1:{grpc_port}"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "AEGIS_DEMO_DIR": str(tmp_path / "demo")},
        )
    server = ServerProcess(process, "127.0.0.1", port, log_path, grpc_port)
    try:
        server.wait_ready(120)
        assert (tmp_path / "demo" / "model.pt2").is_file()
        x = np.linspace(-1, 1, DEMO_INPUTS, dtype=np.float32).reshape(1, DEMO_INPUTS)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input__0",
                        "datatype": "FP32",
                        "shape": [1, DEMO_INPUTS],
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
        reply = call(server, "POST", "/v2/models/demo/infer", body.encode())
        assert reply.status == 200, reply
        answer = reply.json()
        (output,) = answer["outputs"]
        assert output["name"] == "output__0" and output["shape"] == [1, 10]
        with torch.no_grad():
            expected = build_demo_module()(torch.from_numpy(x)).numpy().ravel()
        np.testing.assert_allclose(output["data"], expected, rtol=1e-5, atol=1e-6)
    finally:
        assert server.stop() == 0, server.log()
