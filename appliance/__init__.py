"""Aegis: an inference appliance for Cloud TPU VMs (Open Inference Protocol v2).

The Python API declares models without a config file:

    from appliance import registry, ModelConfig
    registry.register("heavy_model", "v1", ModelConfig(model_path="/models/heavy_model.pt2"))
    serve(bind=["127.0.0.1:8080"])
"""

from appliance.api import serve
from appliance.config import AppConfig, ConfigError, ModelConfig, load_config
from appliance.registry import ModelRegistry, registry
from appliance.tensors import TensorSpec

__all__ = [
    "AppConfig",
    "ConfigError",
    "ModelConfig",
    "ModelRegistry",
    "TensorSpec",
    "load_config",
    "registry",
    "serve",
]
