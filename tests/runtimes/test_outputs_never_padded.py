"""Outputs are never padded: an output dimension that the artifact ties to a padded input
dimension is cut back to each request's own length, declared or not; where the artifact cannot
say which output dimensions follow a padded one, the load fails and says what to declare."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.config import ModelConfig
from appliance.runtimes import ArtifactError
from appliance.runtimes.torch_runtime import TorchRuntime
from appliance.tensors import TensorSpec
from tests.support.config import model_table, server_config, tensor_table
from tests.support.models import script_pt
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import infer
from tests.support.zoo import ZOO, export_zoo

ENCODER = ZOO["encoder"]  # inputs ids, mask [-1, "seq"]; outputs pooled, tokens [-1, seq, 32]
SEQ = "[models.dims]\nseq = [4, 8]\n"


def encoder_inputs() -> str:
    return "".join(tensor_table("inputs", name, "INT64", [-1, "seq"]) for name in ("ids", "mask"))


def onnx_seq(path: Path) -> Path:
    """y = 2x over x [batch, seq]; the graph leaves y's length unnamed, onnxruntime infers it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two"], value_float=2.0),
            helper.make_node("Mul", ["x", "two"], ["y"]),
        ],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class Doubled(torch.nn.Module):
    """An output whose length is twice the input's: it grows with the padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1)


@pytest.fixture(scope="module")
def encoder_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_zoo(tmp_path_factory.mktemp("zoo"), ("encoder",))["encoder"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, encoder_pt2: Path) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("server")
    onnx_path = onnx_seq(workdir / "seq.onnx")
    models = (
        # Outputs left undeclared: the artifact's signature says `tokens` follows `seq`.
        model_table("undeclared", encoder_pt2, "max_batch_size = 4\n" + SEQ)
        + encoder_inputs()
        # Outputs declared with -1 where the export says `seq`.
        + model_table("declared_any", encoder_pt2, "max_batch_size = 4\n" + SEQ)
        + encoder_inputs()
        + tensor_table("outputs", "pooled", "FP32", [-1, 32])
        + tensor_table("outputs", "tokens", "FP32", [-1, -1, 32])
        + model_table("onnx", onnx_path, 'runtime = "onnx"\nmax_batch_size = 4\n' + SEQ)
        + tensor_table("inputs", "x", "FP32", [-1, "seq"])
    )
    with running_server(server_config(workdir, models), workdir) as process:
        yield process


@pytest.mark.parametrize("model", ["undeclared", "declared_any"])
def test_an_exported_output_that_follows_seq_comes_back_at_the_requests_length(
    server: ServerProcess, model: str
) -> None:
    rng = np.random.default_rng(5)
    inputs = ENCODER.example(rng, 2, {"seq": 5})  # padded to the bucket of 8
    status, outputs = infer(server.url, model, inputs)
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    want = ENCODER.eager(inputs)
    assert outputs["tokens"].shape == (2, 5, 32)
    np.testing.assert_allclose(outputs["tokens"], want["tokens"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["pooled"], want["pooled"], rtol=1e-5, atol=1e-5)


def test_an_onnx_output_sharing_the_inputs_dim_param_comes_back_at_the_requests_length(
    server: ServerProcess,
) -> None:
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    status, outputs = infer(server.url, "onnx", {"x": x})
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    np.testing.assert_array_equal(outputs["y"], 2 * x)


def config(path: Path, **fields: object) -> ModelConfig:
    return ModelConfig(model_path=str(path), max_batch_size=4, dims={"seq": (4, 8)}, **fields)


def test_a_torchscript_output_left_dynamic_beside_a_padded_dim_is_refused(
    tmp_path: Path,
) -> None:
    """TorchScript carries no shapes: whether the output follows `seq` cannot be known."""
    artifact = script_pt(Doubled(), tmp_path / "doubled.pt")
    declared = config(
        artifact,
        inputs=(TensorSpec("x", "FP32", (-1, "seq")),),
        outputs=(TensorSpec("y", "FP32", (-1, -1)),),
    )
    with pytest.raises(
        ArtifactError,
        match=r"output 'y' dimension 1 is dynamic, and the artifact does not say whether it "
        r"follows the padded dimension 'seq': declare the output in \[\[models.outputs\]\]",
    ):
        TorchRuntime(declared, artifact).load()


def test_an_exported_output_that_grows_with_a_padded_dim_is_refused(tmp_path: Path) -> None:
    seq = torch.export.Dim("seq", min=1, max=32)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(
        Doubled(), (torch.ones(3, 5),), dynamic_shapes=({0: batch, 1: seq},)
    )
    artifact = tmp_path / "doubled.pt2"
    torch.export.save(program, str(artifact))
    declared = config(artifact, inputs=(TensorSpec("x", "FP32", (-1, "seq")),))
    with pytest.raises(
        ArtifactError, match=r"output 'output__0' dimension 1 is 2\*seq in the export"
    ):
        TorchRuntime(declared, artifact).load()
