"""Without torch_xla (the main venv): a `tpu` model is DeviceUnavailable, so the CPU-fallback policy
applies. Runs in the main test tier; the XLA tier's venv has torch_xla and skips it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from appliance.config import ModelConfig
from appliance.demo import export_demo_model
from appliance.runtimes import DeviceUnavailable
from appliance.runtimes.xla_runtime import XlaRuntime
from tests.support.http import get_json
from tests.support.server import running_server

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here"
)


def test_load_is_device_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"  # never read: the device is opened first
    runtime = XlaRuntime(ModelConfig(model_path=str(path), runtime="tpu", device="tpu"), path)
    with pytest.raises(DeviceUnavailable, match="torch_xla cannot be imported"):
        runtime.load()


def test_a_tpu_model_is_served_on_the_cpu(tmp_path: Path) -> None:
    artifact = export_demo_model(tmp_path / "demo.pt2")
    config = (
        f'[storage]\ncache_dir = "{tmp_path / "models"}"\n'
        f'[[models]]\nname = "demo"\nmodel_path = "{artifact}"\nruntime = "tpu"\ndevice = "tpu"\n'
    )
    with running_server(config, tmp_path) as server:
        metadata = get_json(server, "/v2/models/demo")
        assert (metadata["parameters"]["device"], metadata["parameters"]["runtime"]) == (
            "cpu",
            "torch",
        )
        assert "torch_xla cannot be imported" in server.log()
