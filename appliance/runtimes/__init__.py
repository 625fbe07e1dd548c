"""Runtimes: one loaded model on one device, behind the `Runtime` interface.

Each runtime's module is imported only when a model asks for it, so a host without onnxruntime
or torch_xla serves the other runtimes unchanged.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from appliance.config import ModelConfig, XlaConfig
from appliance.runtimes.base import (
    ArtifactError,
    DeviceUnavailable,
    ModelExecutionError,
    Runtime,
    RuntimeFailure,
    RuntimeStats,
)

__all__ = [
    "ArtifactError",
    "DeviceUnavailable",
    "ModelExecutionError",
    "Runtime",
    "RuntimeFailure",
    "RuntimeStats",
    "create_runtime",
    "runtime_class",
]

_RUNTIME_CLASSES = {
    "torch": ("appliance.runtimes.torch_runtime", "TorchRuntime"),
    "onnx": ("appliance.runtimes.onnx_runtime", "OnnxRuntime"),
    "tpu": ("appliance.runtimes.xla_runtime", "XlaRuntime"),
}

_MISSING_PACKAGE_HINT = {
    "onnx": "install the onnx extra: pip install 'aegis-appliance[onnx]'",
    "tpu": "install torch_xla matching this host's torch (the aegis_tpu_runtime Ansible role does)",
}


def runtime_class(runtime: str) -> type[Runtime]:
    module_name, class_name = _RUNTIME_CLASSES[runtime]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = _MISSING_PACKAGE_HINT.get(runtime, "")
        raise DeviceUnavailable(
            f"runtime {runtime!r} cannot be imported ({error}); {hint}"
        ) from None
    return getattr(module, class_name)


def create_runtime(config: ModelConfig, artifact: Path, xla: XlaConfig | None = None) -> Runtime:
    """An unloaded runtime for `config`; call `load()` on it (it blocks)."""
    cls = runtime_class(config.runtime)
    if config.runtime == "tpu":
        cache = xla.compilation_cache_dir if xla is not None else None
        return cls(config, artifact, compilation_cache_dir=cache or None)
    return cls(config, artifact)
