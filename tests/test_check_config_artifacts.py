"""`aegis check-config` reads each artifact's signature and refuses what `aegis serve` would,
naming the key; `--no-artifacts` checks the file alone. Run as the real command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.config import model_table, tensor_table
from tests.support.zoo import export_zoo


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ids, mask [batch <= 64, seq <= 64]: a .pt2 with a dynamic dimension past the batch."""
    return export_zoo(tmp_path_factory.mktemp("zoo"), ("encoder",))["encoder"]


def check_config(tmp_path: Path, models: str, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "aegis.toml"
    path.write_text(f'[storage]\ncache_dir = "{tmp_path / "cache"}"\n\n{models}')
    return subprocess.run(
        [sys.executable, "-m", "appliance", "check-config", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


TPU = 'runtime = "tpu"\ndevice = "tpu"\nmax_batch_size = 8'


def test_a_tpu_model_with_a_dynamic_dimension_and_no_buckets_is_refused(
    tmp_path: Path, encoder: Path
) -> None:
    result = check_config(tmp_path, model_table("enc", encoder, TPU))
    assert result.returncode == 2, result
    assert (
        "models[0] (enc:1): encoder.pt2: input 'ids' dimension 1 is dynamic without buckets"
        in result.stderr
    ), result.stderr


def test_no_artifacts_keeps_the_quick_check_of_the_file_alone(
    tmp_path: Path, encoder: Path
) -> None:
    result = check_config(tmp_path, model_table("enc", encoder, TPU), "--no-artifacts")
    assert result.returncode == 0, result.stderr
    assert "valid (1 model(s))" in result.stdout


def test_max_batch_size_above_the_exports_batch_limit_is_refused(
    tmp_path: Path, encoder: Path
) -> None:
    result = check_config(tmp_path, model_table("enc", encoder, "max_batch_size = 128"))
    assert result.returncode == 2, result
    assert (
        "encoder.pt2: max_batch_size is 128, but input 'ids' dimension 0 (the batch) accepts at "
        "most 64" in result.stderr
    ), result.stderr


def test_a_declared_input_shape_the_model_does_not_take_is_refused(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    models = model_table("mlp", artifacts["mlp.pt2"]) + tensor_table(
        "inputs", "x", "FP32", [-1, 16]
    )
    result = check_config(tmp_path, models)
    assert result.returncode == 2, result
    assert (
        "models[0] (mlp:1): mlp.pt2: inputs[0].shape of 'x' is declared [-1, 16], the model "
        "takes [-1, 8] (dimension 1 is 8, not 16)" in result.stderr
    ), result.stderr


def test_a_servable_config_passes_with_its_artifacts_checked(
    tmp_path: Path, encoder: Path, artifacts: dict[str, Path]
) -> None:
    seq_inputs = "".join(
        tensor_table("inputs", name, "INT64", [-1, "seq"]) for name in ("ids", "mask")
    )
    models = (
        model_table("enc", encoder, TPU + "\n[models.dims]\nseq = [8, 16]")
        + seq_inputs
        + model_table("mlp", artifacts["mlp.onnx"], 'runtime = "onnx"')
    )
    result = check_config(tmp_path, models)
    assert result.returncode == 0, result.stderr
    assert "valid (2 model(s), 2 artifact(s) checked)" in result.stdout


def test_a_remote_model_not_synced_here_is_named_as_skipped(tmp_path: Path) -> None:
    result = check_config(tmp_path, model_table("remote", "gs://bucket/models/m/1/model.pt2"))
    assert result.returncode == 0, result.stderr
    assert "valid (1 model(s), 0 artifact(s) checked)" in result.stdout
    assert (
        "models[0] (remote:1): gs://bucket/models/m/1/model.pt2 is not synced on this host"
        in result.stderr
    ), result.stderr
