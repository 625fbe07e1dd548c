"""A runtime that batches refuses an artifact whose first dimension is a fixed size, and says how
to export it in its own tool's terms; one that serves batches of one takes it as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ModelConfig
from appliance.runtimes import ArtifactError
from appliance.runtimes.base import Runtime
from appliance.runtimes.jax_runtime import JaxRuntime
from appliance.runtimes.torch_runtime import TorchRuntime
from appliance.tensors import Signature, TensorSpec

FIXED = Signature((TensorSpec("x", "FP32", (2, 8)),), (TensorSpec("y", "FP32", (-1, 4)),))


def runtime_for(
    runtime_class: type[Runtime], name: str, tmp_path: Path, max_batch_size: int
) -> Runtime:
    path = tmp_path / "model.pt2"  # never read: settle_signature checks what it is given
    config = ModelConfig(model_path=str(path), runtime=name, max_batch_size=max_batch_size)
    return runtime_class(config, path)


@pytest.mark.parametrize(
    ("runtime_class", "name", "remedy"),
    [
        (TorchRuntime, "torch", "dynamic first dimension (torch.export.Dim)"),
        (JaxRuntime, "jax", "symbolic first dimension"),
    ],
)
def test_a_fixed_batch_dimension_is_refused_with_the_runtimes_own_remedy(
    runtime_class: type[Runtime], name: str, remedy: str, tmp_path: Path
) -> None:
    runtime = runtime_for(runtime_class, name, tmp_path, max_batch_size=8)
    with pytest.raises(ArtifactError) as refused:
        runtime.settle_signature(FIXED, "model.pt2")
    assert str(refused.value) == (
        f"model.pt2: 'x' has a fixed batch dimension 2; export with a {remedy}"
    )


@pytest.mark.parametrize(("runtime_class", "name"), [(TorchRuntime, "torch"), (JaxRuntime, "jax")])
def test_a_fixed_batch_dimension_is_served_when_batches_are_of_one(
    runtime_class: type[Runtime], name: str, tmp_path: Path
) -> None:
    runtime = runtime_for(runtime_class, name, tmp_path, max_batch_size=1)
    assert runtime.settle_signature(FIXED, "model.pt2").inputs == FIXED.inputs
