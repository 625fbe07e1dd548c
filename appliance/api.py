"""Serving from Python: models declared with `registry.register(...)`, with or without a file.

from appliance import ModelConfig, registry, serve
registry.register("heavy_model", "v1", ModelConfig(model_path="/models/heavy_model.pt2"))
serve(bind=["127.0.0.1:8080"])
"""

from __future__ import annotations

from pathlib import Path

from appliance.config import AppConfig, load_config, with_binds, with_extra_models
from appliance.registry import ModelRegistry, registry


def serve(
    config: AppConfig | str | Path | None = None,
    bind: list[str] | None = None,
    models: ModelRegistry = registry,
    grpc_bind: list[str] | None = None,
) -> int:
    """Serve until SIGTERM; returns the exit code. A path is re-read on SIGHUP."""
    from appliance.lifecycle.supervisor import ConfigSource, serve_host

    path = None
    if isinstance(config, (str, Path)):
        path, config = str(config), load_config(config)
    served = with_binds(with_extra_models(config or AppConfig(), models.models()), bind, grpc_bind)
    return serve_host(ConfigSource(served, path, models.models(), _tuple(bind), _tuple(grpc_bind)))


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)
