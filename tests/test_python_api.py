"""The Python API of the contract: registry.register(...) then serve()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance import ModelConfig, registry
from appliance.config import ConfigError
from tests.support.http import free_port
from tests.support.server import ServerProcess


def test_registered_model_is_served(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    port = free_port()
    script = textwrap.dedent(
        f"""
        from appliance import ModelConfig, registry, serve
        from appliance.config import AppConfig, ServerConfig, StorageConfig

        registry.register("heavy_model", "v1", ModelConfig(
            model_path="{artifacts["mlp.pt2"]}", runtime="torch", device="cpu",
            max_concurrency=2, max_batch_size=64))
        config = AppConfig(server=ServerConfig(shutdown_grace_s=5),
                           storage=StorageConfig(cache_dir="{tmp_path / "cache"}"))
        raise SystemExit(serve(config, bind=["127.0.0.1:{port}"]))
        """
    )
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process, "127.0.0.1", port, log_path)
    try:
        server.wait_ready(120)
        assert server.status("/v2/models/heavy_model/versions/v1/ready") == 200
    finally:
        assert server.stop() == 0, server.log()


def test_registering_twice_is_refused() -> None:
    config = ModelConfig(model_path="/models/a.pt2")
    registry.register("twice", "1", config)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            registry.register("twice", "1", config)
    finally:
        registry.unregister("twice", "1")
