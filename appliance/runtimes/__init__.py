"""Runtimes: one loaded model on one device, behind the `Runtime` interface.

Each runtime's module is imported only when a model asks for it, so a host without onnxruntime
or torch_xla serves the other runtimes unchanged.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from appliance.config import ModelConfig, XlaConfig
from appliance.config.runtime_table import runtime_row
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


def runtime_class(runtime: str) -> type[Runtime]:
    """The class of `runtime`'s table row, its module imported now."""
    row = runtime_row(runtime)
    module_name, class_name = row.implementation.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DeviceUnavailable(
            f"runtime {runtime!r} cannot be imported ({error}); {row.missing_package_hint}"
        ) from None
    runtime_type: type[Runtime] = getattr(module, class_name)
    return runtime_type


def create_runtime(config: ModelConfig, artifact: Path, xla: XlaConfig | None = None) -> Runtime:
    """An unloaded runtime for `config`; call `load()` on it (it blocks)."""
    cache = xla.compilation_cache_dir if xla is not None else None
    return runtime_class(config.runtime)(config, artifact, compilation_cache_dir=cache or None)
