"""Adding a runtime is its module and one row of the runtime table: no other edit to Aegis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from appliance.config import ConfigError, parse_config, runtime_table
from appliance.config.runtime_table import Artifact, RuntimeRow
from appliance.dataplane import DataPlane, InferRequest
from appliance.lifecycle.models import ModelLifecycle
from appliance.lifecycle.notify import SystemdNotifier
from appliance.metrics import Metrics
from appliance.repository import ModelRepository
from tests.support.readiness import RepositoryReadiness

NPZ = RuntimeRow(
    "npz",
    "tests.support.npz_runtime:NpzRuntime",
    ("cpu",),
    (Artifact(".npz", "NumPy arrays", "numpy_npz", "npz"),),
)


@pytest.fixture
def with_npz_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_table, "RUNTIMES", (*runtime_table.RUNTIMES, NPZ))


def test_a_runtime_added_by_one_row_serves_through_config_repository_and_data_plane(
    with_npz_row: None, tmp_path: Path
) -> None:
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.array([0.5, -1.0], dtype=np.float32)
    np.savez(tmp_path / "affine.npz", w=w, b=b)
    config = parse_config(
        {
            "storage": {"cache_dir": str(tmp_path / "cache")},
            "models": [
                {"name": "affine", "model_path": str(tmp_path / "affine.npz"), "runtime": "npz"}
            ],
        }
    )
    rows = np.array([[1, 2, 3], [0, 0, 1]], dtype=np.float32)

    async def run() -> None:
        repository = ModelRepository()
        lifecycle = ModelLifecycle(config, repository, Metrics(), SystemdNotifier(None))
        await lifecycle.start()
        try:
            plane = DataPlane(repository, RepositoryReadiness(repository))
            response = await plane.infer(InferRequest("affine", None, {"x": rows}, {"x": "FP32"}))
            [output] = response.outputs
            assert output.name == "y"
            np.testing.assert_allclose(output.data, rows @ w + b)
            metadata = plane.model_metadata("affine")
            assert (metadata["platform"], metadata["parameters"]["runtime"]) == ("numpy_npz", "npz")
            assert metadata["inputs"][0]["shape"] == [-1, 3]
        finally:
            await lifecycle.close()

    asyncio.run(run())


def test_the_config_holds_an_added_runtime_to_its_row(with_npz_row: None) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(
            {"models": [{"name": "m", "model_path": "/m.npz", "runtime": "npz", "device": "tpu"}]}
        )
    assert refused.value.key == "models[0].device"
    assert "runtime 'npz' runs on device 'cpu', not 'tpu'" in refused.value.reason
    with pytest.raises(ConfigError) as wrong_file:
        parse_config({"models": [{"name": "m", "model_path": "/m.npz"}]})
    assert wrong_file.value.key == "models[0].runtime"
    assert "'/m.npz' is a NumPy arrays file: use runtime = 'npz'" in wrong_file.value.reason


def test_without_its_row_the_runtime_is_unknown_to_the_config() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"models": [{"name": "m", "model_path": "/m.pt2", "runtime": "npz"}]})
    assert refused.value.key == "models[0].runtime"
    assert refused.value.reason.startswith("must be one of torch, onnx, tpu, jax; got 'npz'")
