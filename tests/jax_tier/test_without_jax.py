"""Without jax (the main venv): a `jax` model is DeviceUnavailable, so the CPU-fallback policy
applies. Runs in the main test tier; the JAX tier's venv has jax and skips it."""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from pathlib import Path

import pytest

from appliance.config import ModelConfig
from appliance.demo import export_demo_model
from appliance.runtimes import DeviceUnavailable
from appliance.runtimes.jax_runtime import JaxRuntime
from tests.support.server import running_server, start_server

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is not None, reason="jax is installed here"
)


def test_load_is_device_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "model.jax"  # never read: JAX is set up first
    runtime = JaxRuntime(ModelConfig(model_path=str(path), runtime="jax"), path)
    with pytest.raises(DeviceUnavailable, match="jax cannot be imported"):
        runtime.load()


def test_a_jax_tpu_model_is_served_on_the_cpu_by_torch(tmp_path: Path) -> None:
    artifact = export_demo_model(tmp_path / "demo.pt2")
    config = (
        f'[storage]\ncache_dir = "{tmp_path / "models"}"\n'
        f'[[models]]\nname = "demo"\nmodel_path = "{artifact}"\nruntime = "jax"\ndevice = "tpu"\n'
    )
    with running_server(config, tmp_path) as server:
        with urllib.request.urlopen(server.url + "/v2/models/demo", timeout=30) as response:
            parameters = json.load(response)["parameters"]
        assert (parameters["device"], parameters["runtime"]) == ("cpu", "torch")
        assert "jax cannot be imported" in server.log()


def test_a_jax_cpu_model_fails_the_start_naming_what_is_missing(tmp_path: Path) -> None:
    artifact = export_demo_model(tmp_path / "demo.pt2")
    config = tmp_path / "aegis.toml"
    config.write_text(
        f'[storage]\ncache_dir = "{tmp_path / "models"}"\n'
        f'[[models]]\nname = "demo"\nmodel_path = "{artifact}"\nruntime = "jax"\n'
    )
    server = start_server(config, tmp_path / "server.log")
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    assert code != 0
    assert "requirements-jax.txt" in server.log()
