"""Runtimes: one loaded model on one device, behind the `Runtime` interface.

Each runtime's module is imported only when a model asks for it, so a host without onnxruntime
or torch_xla serves the other runtimes unchanged.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, cast

from appliance.config import ModelConfig, XlaConfig
from appliance.runtimes.base import (
    ArtifactError,
    DeviceUnavailable,
    ModelExecutionError,
    Runtime,
    RuntimeFailure,
    RuntimeStats,
)

if TYPE_CHECKING:
    from appliance.runtimes.xla_runtime import XlaRuntime

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
    "jax": ("appliance.runtimes.jax_runtime", "JaxRuntime"),
}

_MISSING_PACKAGE_HINT = {
    "onnx": "install the onnx extra: pip install 'aegis-appliance[onnx]'",
    "tpu": "install torch_xla matching this host's torch (the aegis_tpu_runtime Ansible role does)",
    "jax": (
        "install the aegis_tpu_runtime role's jax flavor (requirements-jax.txt): "
        "jax, torchax and the torch they take"
    ),
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
    runtime_type: type[Runtime] = getattr(module, class_name)
    return runtime_type


def create_runtime(config: ModelConfig, artifact: Path, xla: XlaConfig | None = None) -> Runtime:
    """An unloaded runtime for `config`; call `load()` on it (it blocks)."""
    cls = runtime_class(config.runtime)
    if config.runtime == "tpu":
        cache = xla.compilation_cache_dir if xla is not None else None
        xla_runtime = cast("type[XlaRuntime]", cls)
        return xla_runtime(config, artifact, compilation_cache_dir=cache or None)
    return cls(config, artifact)
