"""The torch and onnx runtimes on their own: signatures, outputs, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from appliance.config import ModelConfig
from appliance.runtimes import ArtifactError, DeviceUnavailable, create_runtime
from appliance.runtimes.onnx_runtime import OnnxRuntime
from appliance.runtimes.torch_runtime import TorchRuntime
from appliance.tensors import TensorSpec
from tests.support.models import Mlp, export_pt2

X = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast(np.ndarray, Mlp()(torch.from_numpy(x)).numpy())


def loaded(path: Path, **config: object) -> TorchRuntime | OnnxRuntime:
    runtime = create_runtime(ModelConfig(model_path=str(path), **config), path)
    runtime.load()
    return runtime  # type: ignore[return-value]


def test_exported_program_carries_its_signature(artifacts: dict[str, Path]) -> None:
    runtime = loaded(artifacts["mlp.pt2"])
    assert runtime.signature is not None
    assert runtime.signature.inputs == (TensorSpec("x", "FP32", (-1, 8)),)
    assert runtime.signature.outputs == (TensorSpec("output__0", "FP32", (-1, 3)),)
    np.testing.assert_allclose(runtime.run({"x": X})["output__0"], reference(X), rtol=1e-5)


def test_declared_names_replace_the_artifact_names(artifacts: dict[str, Path]) -> None:
    runtime = loaded(
        artifacts["mlp.pt2"],
        inputs=[{"name": "input__0", "datatype": "FP32", "shape": [-1, 8]}],
        outputs=[{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
    )
    result = runtime.run({"input__0": X})
    np.testing.assert_allclose(result["scores"], reference(X), rtol=1e-5)


def test_declared_datatype_must_match_the_artifact(artifacts: dict[str, Path]) -> None:
    with pytest.raises(ArtifactError, match="declared INT64, the model takes FP32"):
        loaded(
            artifacts["mlp.pt2"],
            inputs=[{"name": "x", "datatype": "INT64", "shape": [-1, 8]}],
        )


def test_torchscript_runs_with_its_declared_signature(artifacts: dict[str, Path]) -> None:
    runtime = loaded(
        artifacts["mlp.pt"],
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    )
    np.testing.assert_allclose(runtime.run({"x": X})["y"], reference(X), rtol=1e-5)


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_a_torchscript_model_declared_with_bytes_is_refused_at_load(
    artifacts: dict[str, Path], kind: str
) -> None:
    declared = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    declared[kind][0]["datatype"] = "BYTES"
    with pytest.raises(ArtifactError, match=f"{kind[:-1]} '[xy]' is declared BYTES"):
        loaded(artifacts["mlp.pt"], **declared)


def test_onnx_signature_comes_from_the_model(artifacts: dict[str, Path]) -> None:
    runtime = loaded(artifacts["mlp.onnx"], runtime="onnx")
    assert runtime.signature is not None
    assert runtime.signature.inputs == (TensorSpec("x", "FP32", (-1, 8)),)
    np.testing.assert_allclose(runtime.run({"x": X})["y"], reference(X), rtol=1e-5)


def test_a_fixed_batch_dimension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fixed.pt2"
    program = torch.export.export(Mlp().eval(), (torch.zeros(2, 8),))
    torch.export.save(program, str(path))
    with pytest.raises(ArtifactError, match="fixed batch dimension 2"):
        loaded(path)


def test_a_folder_with_one_artifact_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    export_pt2(Mlp(), (torch.zeros(2, 8),), folder / "model.pt2")
    (folder / "README.txt").write_text("notes")
    runtime = loaded(folder / "model.pt2")
    assert runtime.signature is not None


def test_cuda_without_a_gpu_is_device_unavailable(artifacts: dict[str, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    runtime = create_runtime(
        ModelConfig(model_path=str(artifacts["mlp.pt2"]), device="cuda"), artifacts["mlp.pt2"]
    )
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        runtime.load()
