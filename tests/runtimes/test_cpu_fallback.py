"""cpu_fallback on a host without the configured accelerator (a CUDA model on this CPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ServerFactory
from tests.support.config import model_table, server_config
from tests.support.http import get_json, get_text
from tests.support.server import start_server

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without a GPU")


def test_unavailable_device_serves_on_the_cpu_and_says_so(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(
        model_table("m", artifacts["mlp.pt2"], 'device = "cuda"\ncpu_fallback = "unavailable"')
    )
    metadata = get_json(server, "/v2/models/m", timeout_s=10)
    assert metadata["parameters"]["device"] == "cpu"
    metrics = get_text(server, "/metrics", timeout_s=10)
    assert 'aegis_model_ready{device="cpu",model="m",version="1"} 1.0' in metrics
    assert "serving_on_cpu" in server.log()


def test_fallback_off_fails_the_start_clearly(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(
        server_config(
            tmp_path,
            model_table("m", artifacts["mlp.pt2"], 'device = "cuda"\ncpu_fallback = "off"'),
        )
    )
    server = start_server(config, tmp_path / "server.log")
    try:
        assert server.process.wait(120) == 1
    finally:
        server.stop()
    assert "no CUDA GPU is visible" in server.log()
