"""Every line the server writes is one JSON object: Python warnings (a model's own), onnxruntime's
native warnings (an unused initializer), our own lines; and access logs can be cut to errors only
or a sample of the successes without losing a single error line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ServerFactory
from tests.support.bodies import json_infer
from tests.support.config import model_table, tensor_table
from tests.support.fault_models import WarnsOnLargeInputs
from tests.support.http import call
from tests.support.models import script_pt
from tests.support.server import ServerProcess


def onnx_with_unused_initializer(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "unused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.zeros(3, np.float32), "unused")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def json_lines(log: str) -> list[dict[str, Any]]:
    lines = [line for line in log.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        document = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(document, dict), line
        parsed.append(document)
    return parsed


def test_python_and_native_warnings_reach_the_log_as_json(
    serve: ServerFactory, tmp_path: Path
) -> None:
    warns = script_pt(WarnsOnLargeInputs(), tmp_path / "warns.pt")
    models = (
        model_table("warns", warns, "warmup_iters = 0")
        + tensor_table("inputs", "x", "FP32", [-1, 2])
        + tensor_table("outputs", "y", "FP32", [-1, 2])
        + model_table(
            "unused", onnx_with_unused_initializer(tmp_path / "u.onnx"), 'runtime = "onnx"'
        )
    )
    server = serve(models)
    reply = call(
        server, "POST", "/v2/models/warns/infer", json_infer("x", "FP32", [1, 2], [5000, 1])
    )
    assert reply.status == 200, reply
    log = server.wait_for_log("input magnitude above 1000")
    server.stop()
    lines = json_lines(server.log())
    warnings = [line for line in lines if line.get("logger") == "py.warnings"]
    assert any("input magnitude above 1000" in line["event"] for line in warnings), log[-3000:]
    native = [line for line in lines if line.get("stream") == "native"]
    assert any("Removing initializer 'unused'" in line["event"] for line in native), log[-3000:]
    assert not any("\x1b[" in line["event"] for line in native)


def access_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [line for line in json_lines(server.log()) if line.get("event") == "infer"]


def test_errors_only_access_log_keeps_every_error(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(model_table("mlp", artifacts["mlp.pt2"]), 'access_log = "errors"')
    good = json_infer("x", "FP32", [1, 8], [0.5] * 8)
    bad = json_infer("x", "FP32", [1, 7], [0.5] * 7)
    statuses = [call(server, "POST", "/v2/models/mlp/infer", good).status for _ in range(30)]
    statuses += [call(server, "POST", "/v2/models/mlp/infer", bad).status for _ in range(5)]
    assert statuses == [200] * 30 + [400] * 5
    server.wait_for_log('"status":400', 5)
    server.stop()
    assert [line["status"] for line in access_lines(server)] == [400] * 5


def test_sampled_access_log_logs_its_share_of_successes_and_every_error(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(model_table("mlp", artifacts["mlp.pt2"]), 'access_log = "sampled:0.25"')
    good = json_infer("x", "FP32", [1, 8], [0.5] * 8)
    bad = json_infer("x", "FP32", [1, 7], [0.5] * 7)
    for _ in range(40):
        assert call(server, "POST", "/v2/models/mlp/infer", good).status == 200
    for _ in range(3):
        assert call(server, "POST", "/v2/models/mlp/infer", bad).status == 400
    server.stop()
    statuses = [line["status"] for line in access_lines(server)]
    assert statuses.count(200) == 10 and statuses.count(400) == 3, statuses
