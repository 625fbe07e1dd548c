"""`aegis demo` exports the built-in model at first start and serves it on the CPU."""

from __future__ import annotations

import importlib.metadata
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
        assert_the_readme_reply_is_the_demos(server)
    finally:
        assert server.stop() == 0, server.log()


def assert_the_readme_reply_is_the_demos(server: ServerProcess) -> None:
    """The quick start's request, sent as the README sends it, gets the README's digits (to the
    last digit or two, which vary with the CPU's vector units)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    printed = next(line for line in readme.splitlines() if line.startswith('{"model_name":"demo"'))
    body = {
        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]
    }
    reply = call(server, "POST", "/v2/models/demo/infer", json.dumps(body).encode())
    assert reply.status == 200, reply
    got = reply.json()["outputs"][0]["data"]
    want = json.loads(printed)["outputs"][0]["data"]
    # float32 sums in another order: 6e-7 apart on an AMD EPYC against the README's digits.
    np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-7)


def test_version_prints_the_package_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == f"aegis {importlib.metadata.version('aegis-appliance')}"


def test_make_demo_takes_another_port_or_bind() -> None:
    root = Path(__file__).resolve().parents[1]

    def planned(*args: str) -> str:
        result = subprocess.run(
            ["make", "-n", "-C", str(root), "demo", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    assert "demo --bind 127.0.0.1:8080" in planned()
    assert "demo --bind 127.0.0.1:9090" in planned("PORT=9090")
    assert "demo --bind 0.0.0.0:9191" in planned("BIND=0.0.0.0:9191")
