"""Declared output datatypes and shapes are checked against what the artifact returns, at load:
a declaration the model does not keep refuses the start, naming the output."""

from __future__ import annotations

from pathlib import Path

from tests.support.config import model_table, tensor_table
from tests.support.fault_models import Doubles
from tests.support.models import script_pt
from tests.support.server import run_until_exit


def test_a_torchscript_output_declared_with_another_datatype_refuses_the_start(
    tmp_path: Path,
) -> None:
    """TorchScript carries no signature: the check is against what warmup gets back (and runs
    even with warmup_iters = 0)."""
    artifact = script_pt(Doubles(), tmp_path / "doubles.pt")
    models = (
        model_table("doubles", artifact, "warmup_iters = 0")
        + tensor_table("inputs", "x", "FP32", [-1, 2])
        + tensor_table("outputs", "y", "INT64", [-1, 2])
    )
    code, log = run_until_exit(tmp_path, models)
    assert code == 1
    assert "output 'y' is declared INT64, the model returns FP32" in log, log[-2000:]


def test_a_torchscript_output_declared_with_another_shape_refuses_the_start(
    tmp_path: Path,
) -> None:
    artifact = script_pt(Doubles(), tmp_path / "doubles.pt")
    models = (
        model_table("doubles", artifact)
        + tensor_table("inputs", "x", "FP32", [-1, 2])
        + tensor_table("outputs", "y", "FP32", [-1, 3])
    )
    code, log = run_until_exit(tmp_path, models)
    assert code == 1
    assert "output 'y' is declared [-1, 3], the model returns [1, 2]" in log, log[-2000:]


def test_an_exported_output_declared_with_another_datatype_refuses_the_start(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    models = model_table("mlp", artifacts["mlp.pt2"]) + tensor_table(
        "outputs", "y", "INT32", [-1, 3]
    )
    code, log = run_until_exit(tmp_path, models)
    assert code == 1
    assert "outputs 'y' is declared INT32, the model returns FP32" in log, log[-2000:]
