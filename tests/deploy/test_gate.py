"""The deploy gate against a real server on loopback: it passes a host serving every model where
it was configured, and fails one whose TPU model fell back to the CPU, whose model cannot answer,
or that never turns ready, naming the model and the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ServerFactory
from tests.deploy.roletools import GATE, load_tool, run_tool
from tests.support.config import model_table
from tests.support.server import ServerProcess

TPU = 'runtime = "tpu"\ndevice = "tpu"\nwarmup_iters = 0'


def gate(server: ServerProcess, *args: str, timeout: str = "60") -> tuple[int, dict[str, Any], str]:
    result = run_tool(GATE, "--url", server.url, "--unit", "", "--timeout", timeout, *args)
    return result.returncode, json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_a_host_serving_each_model_on_its_device_passes(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(
        model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0")
        + model_table("onnx", artifacts["mlp.onnx"], 'runtime = "onnx"\nwarmup_iters = 0', "3")
    )
    code, report, stderr = gate(server, "--model", "mlp:1:cpu", "--model", "onnx:3:cpu")
    assert code == 0, stderr
    assert [(m["model"], m["version"], m["device"]) for m in report["models"]] == [
        ("mlp", "1", "cpu"),
        ("onnx", "3", "cpu"),
    ]


def test_a_tpu_model_serving_on_the_cpu_fails_the_host_unless_allowed(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    # No TPU here: with the default cpu_fallback = "unavailable" the model serves, on the CPU.
    server = serve(model_table("heavy", artifacts["mlp.pt2"], TPU))
    code, report, _ = gate(server, "--model", "heavy:1:tpu")
    assert code == 1
    assert "model heavy:1 runs on 'cpu', not 'tpu'" in report["error"], report
    code, report, stderr = gate(server, "--model", "heavy:1:tpu", "--allow-cpu", "heavy")
    assert code == 0, stderr
    assert report["models"][0]["device"] == "cpu"


def test_a_failing_smoke_inference_fails_the_host_naming_the_model(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    wrong = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0] * 3}]}
    )
    code, report, _ = gate(server, "--model", "mlp:1:cpu", "--request", f"mlp={wrong}")
    assert code == 1
    assert "model mlp:1: smoke inference answered 400" in report["error"], report


def test_a_model_that_is_not_served_fails_the_host(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    code, report, _ = gate(server, "--model", "other:1:cpu")
    assert code == 1
    assert "/v2/models/other/versions/1: 404" in report["error"], report


def test_a_host_that_never_answers_fails_when_the_gate_time_is_up(tmp_path: Path) -> None:
    result = run_tool(
        GATE, "--url", "http://127.0.0.1:9", "--unit", "", "--timeout", "2", "--model", "m:1:cpu"
    )
    assert result.returncode == 1
    assert "not ready in time: /v2/health/ready:" in json.loads(result.stdout)["error"]


def test_serving_compilations_are_read_from_the_metrics_the_appliance_renders() -> None:
    from appliance.metrics import Metrics, RuntimeSample
    from appliance.runtimes.base import RuntimeStats

    module = load_tool(GATE)
    metrics = Metrics()
    samples = [
        RuntimeSample("warm", "1", "xla:0", RuntimeStats(compilations=5)),
        RuntimeSample(
            "missed", "2", "xla:0", RuntimeStats(compilations=7, compilations_after_warmup=2)
        ),
    ]
    metrics.watch_runtimes(lambda: samples)
    counts = module.serving_compilations(metrics.render().decode())
    assert counts == {"warm:1": 0.0, "missed:2": 2.0}


def test_devices_are_compared_by_kind_as_the_runtimes_report_them() -> None:
    gate_module = load_tool(GATE)
    reported = {
        "cpu": "cpu",
        "cuda:0": "cuda",
        "xla:tpu:0": "tpu",
        "xla:cpu:0": "cpu",
        "jax:tpu:0": "tpu",
        "jax:cpu:0": "cpu",
    }
    assert {label: gate_module.device_kind(label) for label in reported} == reported
