"""The Python API for declaring models without a config file.

from appliance import registry, ModelConfig
registry.register("heavy_model", "v1", ModelConfig(model_path="/models/heavy_model.pt2"))
appliance.serve()
"""

from __future__ import annotations

from appliance.config import ConfigError, DeclaredModel, ModelConfig


class ModelRegistry:
    """Model versions declared in code; `serve()` adds them to the config file's."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], DeclaredModel] = {}

    def register(self, name: str, version: str, config: ModelConfig) -> None:
        model = DeclaredModel.of(name, version, config)
        if (model.name, model.version) in self._models:
            raise ConfigError("name", f"model {name!r} version {version!r} is already registered")
        self._models[(model.name, model.version)] = model

    def unregister(self, name: str, version: str) -> None:
        self._models.pop((name, version), None)

    def models(self) -> tuple[DeclaredModel, ...]:
        return tuple(self._models.values())


registry = ModelRegistry()
