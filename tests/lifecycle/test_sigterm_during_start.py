"""SIGTERM at any moment of a start (load, warmup) exits within shutdown_grace_s plus a second,
with rc 0 and no traceback, on `torch` and `onnx`: the start stops waiting for a step that native
code is running (it cannot be interrupted) and the process exits past it.

The models warm for tens of seconds at least (a chain of large matmuls), so a SIGTERM sent when
their warmup has been logged lands inside it whatever the machine's speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.config import model_table, server_config, tensor_table
from tests.support.models import export_pt2
from tests.support.stops import assert_stopped_in_time, sigterm_when_logged

GRACE_S = 3.0
WIDTH = 1024
ROUNDS = 400  # 1024^3 multiply-adds each: a warmup of tens of seconds at least


class Spin(torch.nn.Module):
    """y = x, after ROUNDS chained WIDTH x WIDTH matmuls whose result is multiplied by zero."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((WIDTH, WIDTH), 1.0 / WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.weight * x.sum()
        for _ in range(ROUNDS):
            acc = acc @ self.weight
        return x + acc.sum() * 0.0


def spin_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(Spin().weight.detach().numpy(), "weight")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Mul", ["weight", "total"], ["acc0"]),
    ]
    for index in range(ROUNDS):
        nodes.append(helper.make_node("MatMul", [f"acc{index}", "weight"], [f"acc{index + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"acc{ROUNDS}"], ["spun"], keepdims=0),
        helper.make_node("Sub", ["spun", "spun"], ["zero"]),
        helper.make_node("Add", ["x", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "spin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def spin_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spin")
    return {
        "torch": export_pt2(Spin(), (torch.zeros(2, 4),), root / "spin.pt2"),
        "onnx": spin_onnx(root / "spin.onnx"),
    }


def spin_config(workdir: Path, runtime: str, artifact: Path) -> str:
    table = model_table(
        "spin", artifact, f'runtime = "{runtime}"\nmax_batch_size = 4\nwarmup_iters = 1'
    )
    if runtime == "onnx":
        table += tensor_table("inputs", "x", "FP32", [-1, 4])
        table += tensor_table("outputs", "y", "FP32", [-1, 4])
    return server_config(workdir, table).replace(
        "shutdown_grace_s = 5", f"shutdown_grace_s = {GRACE_S:g}"
    )


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("event", ["model_loading", "model_warming"])
def test_sigterm_during_a_start_exits_within_grace_with_rc_0_and_no_traceback(
    tmp_path: Path, spin_models: dict[str, Path], runtime: str, event: str
) -> None:
    config = spin_config(tmp_path, runtime, spin_models[runtime])
    assert f"shutdown_grace_s = {GRACE_S:g}" in config
    stopped = sigterm_when_logged(config, tmp_path, event, GRACE_S, {"OMP_NUM_THREADS": "1"})
    print(
        f"\nFIGURES sigterm at {event} on {runtime}: exit {stopped.code} in {stopped.seconds:.2f} s"
    )
    assert_stopped_in_time(stopped, GRACE_S)
    assert '"event":"model_ready"' not in stopped.log
