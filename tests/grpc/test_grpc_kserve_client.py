"""KServe's Python SDK (`kserve.InferenceGRPCClient`) against the real server over gRPC. kserve
needs protobuf<7, which this venv cannot hold, so the SDK runs in .venv-kserve (`make
venv-kserve`, a step of `make test-unit`) as a subprocess, tests/grpc/kserve_client.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch

from tests.conftest import ServerFactory
from tests.support.config import model_table
from tests.support.http import get_json
from tests.support.models import Mlp
from tests.support.v2 import infer

HERE = Path(__file__).resolve().parent
KSERVE_PYTHON = HERE.parents[1] / ".venv-kserve" / "bin" / "python"


def test_kserve_sdk_grpc_client_reads_health_and_metadata_and_infers_raw(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    # A missing venv fails the test: skipping would let `make test` pass without the client.
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} is missing: run `make venv-kserve`"
    good = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    bad = good[:, :7]
    # Started first, the client imports the SDK while the server starts. Should the start fail,
    # leaving the block closes the client's stdin, which ends it.
    with subprocess.Popen(
        [str(KSERVE_PYTHON), str(HERE / "kserve_client.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as client:
        server = serve(model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 8"))
        orders = {"address": server.grpc_address, "model": "mlp", "input": "x"}
        out, err = client.communicate(
            json.dumps({**orders, "good": good.tolist(), "bad": bad.tolist()}), timeout=120
        )
    assert client.returncode == 0, err
    found = json.loads(out)
    for call in ("server_live", "server_ready", "model_ready"):
        assert found[call] is True, call

    answer = found["infer"]
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("good", "mlp", "1")
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output__0", "FP32", [3, 3])
    with torch.no_grad():
        expected = Mlp()(torch.from_numpy(good)).numpy()
    np.testing.assert_allclose(np.asarray(output["data"], np.float32), expected, rtol=1e-5)

    # The status that stands for HTTP's 400, with HTTP's own message, which names the input.
    status, message = infer(server.url, "mlp", {"x": bad})
    assert status == 400 and isinstance(message, str)
    assert message.startswith("input 'x' ")
    assert found["bad"] == {"code": "INVALID_ARGUMENT", "details": message}

    metadata, over_http = found["metadata"], get_json(server, "/v2/models/mlp")
    assert (metadata["name"], metadata["platform"], metadata["versions"]) == (
        over_http["name"],
        over_http["platform"],
        over_http["versions"],
    )
    for kind in ("inputs", "outputs"):
        assert metadata[kind] == [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]}
            for t in over_http[kind]
        ]
