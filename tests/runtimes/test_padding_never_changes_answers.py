"""Padding a named dimension never changes an answer: a model that reads the padded positions
(an average over "seq" without a mask) does not come up, and says what to give it; one that
masks them, or pads with what it ignores, serves every length equal to eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from appliance.config import ModelConfig
from appliance.repository import warm_up
from appliance.runtimes import ArtifactError
from appliance.runtimes.torch_runtime import TorchRuntime
from appliance.tensors import TensorSpec
from tests.support.config import model_table, server_config, tensor_table
from tests.support.server import run_until_exit, running_server
from tests.support.v2 import infer

BUCKETS = "max_batch_size = 4\n[models.dims]\nseq = [4, 8]\n"


class MeanOverSeq(torch.nn.Module):
    """x [batch, seq] -> its mean over seq: every padded zero pulls the mean down."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


class MaskedMean(torch.nn.Module):
    """The mean of x over the positions that `mask` keeps: padding (mask 0) is ignored."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kept = mask.to(x.dtype)
        return (x * kept).sum(dim=1, keepdim=True) / kept.sum(dim=1, keepdim=True)


def export_seq(module: torch.nn.Module, inputs: int, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=8)
    seq = torch.export.Dim("seq", min=1, max=32)
    example = tuple(torch.ones(2, 5) for _ in range(inputs))
    dynamic = tuple({0: batch, 1: seq} for _ in example)
    torch.export.save(torch.export.export(module.eval(), example, dynamic_shapes=dynamic), path)
    return path


def declared(
    artifact: Path, names: tuple[str, ...], pad_value: float = 0.0, **fields: object
) -> ModelConfig:
    return ModelConfig(
        model_path=str(artifact),
        max_batch_size=4,
        dims={"seq": (4, 8)},
        inputs=tuple(TensorSpec(name, "FP32", (-1, "seq"), pad_value) for name in names),
        **fields,
    )


def test_a_model_that_averages_the_padding_does_not_come_up(tmp_path: Path) -> None:
    artifact = export_seq(MeanOverSeq(), 1, tmp_path / "mean.pt2")
    runtime = TorchRuntime(declared(artifact, ("x",)), artifact)
    runtime.load()
    with pytest.raises(
        ArtifactError,
        match=r"mean.pt2: output 'output__0' changes when 'seq' is padded from 4 to 8 \(by up "
        r"to 0.5\): the model reads the padded positions",
    ):
        warm_up(runtime, (1, 2, 4), {"seq": (4, 8)}, iterations=1)


def test_padding_check_warn_serves_the_model_and_logs_the_difference(tmp_path: Path) -> None:
    artifact = export_seq(MeanOverSeq(), 1, tmp_path / "mean.pt2")
    runtime = TorchRuntime(declared(artifact, ("x",), padding_check="warn"), artifact)
    runtime.load()
    with capture_logs() as logs:
        warm_up(runtime, (1, 2, 4), {"seq": (4, 8)}, iterations=1)
    [warning] = [line for line in logs if line["event"] == "padding_changes_outputs"]
    assert warning["output"] == "output__0" and warning["dim"] == "seq"
    assert warning["buckets"] == [4, 8] and warning["difference"] == pytest.approx(0.5)
    assert warning["log_level"] == "warning"


def test_a_pad_value_the_model_ignores_lets_it_come_up(tmp_path: Path) -> None:
    """A max over seq ignores padding of the input's smallest value, not zeros of positives."""

    class MaxOverSeq(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.amax(dim=1, keepdim=True)

    artifact = export_seq(MaxOverSeq(), 1, tmp_path / "max.pt2")
    runtime = TorchRuntime(declared(artifact, ("x",), pad_value=-1e30), artifact)
    runtime.load()
    warm_up(runtime, (1, 2, 4), {"seq": (4, 8)}, iterations=1)


def test_the_server_refuses_the_unmasked_model_and_serves_the_masked_one(tmp_path: Path) -> None:
    unmasked = export_seq(MeanOverSeq(), 1, tmp_path / "mean.pt2")
    (tmp_path / "unmasked").mkdir()
    code, log = run_until_exit(
        tmp_path / "unmasked",
        model_table("mean", unmasked, BUCKETS) + tensor_table("inputs", "x", "FP32", [-1, "seq"]),
    )
    assert code == 1
    assert "output 'output__0' changes when 'seq' is padded from 4 to 8" in log, log[-3000:]

    masked = export_seq(MaskedMean(), 2, tmp_path / "masked.pt2")
    models = model_table("masked", masked, BUCKETS) + "".join(
        tensor_table("inputs", name, "FP32", [-1, "seq"]) for name in ("x", "mask")
    )
    workdir = tmp_path / "masked"
    with running_server(server_config(workdir, models), workdir) as server:
        rng = np.random.default_rng(3)
        for length in (1, 4, 5, 8):
            x = rng.standard_normal((2, length)).astype(np.float32)
            mask = np.ones((2, length), dtype=np.float32)
            status, outputs = infer(server.url, "masked", {"x": x, "mask": mask})
            assert status == 200, outputs
            assert isinstance(outputs, dict)
            np.testing.assert_allclose(outputs["output__0"], x.mean(axis=1, keepdims=True), 1e-5)
