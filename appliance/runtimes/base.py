"""The interface every runtime implements, and what the rest of Aegis may assume of it.

A runtime owns one loaded model on one device. The batcher calls `run` from a worker thread with
whole, already padded batches of numpy arrays; a runtime never sees HTTP and never batches.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.config import ModelConfig
from appliance.tensors import Signature, numpy_dtype


class RuntimeFailure(Exception):
    """Base for what a runtime reports to its caller."""


class ArtifactError(RuntimeFailure):
    """The artifact cannot be loaded: wrong format, unsafe content, or a signature mismatch."""


class DeviceUnavailable(RuntimeFailure):
    """The configured device cannot be opened on this host."""


class ModelExecutionError(RuntimeFailure):
    """The model itself failed while running a batch."""


@dataclass
class RuntimeStats:
    """What a runtime reports for metrics at scrape time; compiling runtimes fill in the rest."""

    compilations: int = 0
    compilations_after_warmup: int = 0
    cached_compilations: int = 0
    compile_seconds: tuple[float, ...] = ()
    execute_seconds: float = 0.0
    fallback_ops: dict[str, int] = field(default_factory=dict)


class Runtime(abc.ABC):
    """One model on one device. Subclasses set `signature` and `device` in `load`."""

    name: str = ""

    def __init__(self, config: ModelConfig, artifact: Path) -> None:
        self.config = config
        self.artifact = artifact
        self.signature: Signature | None = None
        self.device: str = "cpu"

    @abc.abstractmethod
    def load(self) -> None:
        """Load the artifact onto the device and resolve the signature. Blocking."""

    @abc.abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: every array has the same leading (batch) dimension. Thread-safe."""

    def warmup(self, batch_size: int) -> None:
        """Run one batch of zeros of `batch_size` rows, so the first real request is not slow."""
        self.run(self.zeros(batch_size))

    def finish_warmup(self) -> None:
        """Called once every bucket has been warmed: anything compiled after this is a defect."""

    def stats(self) -> RuntimeStats:
        return RuntimeStats()

    def close(self) -> None:
        """Release the device memory held by the model."""

    def zeros(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of zeros that fits the signature, variable inner dimensions set to 1."""
        assert self.signature is not None, "load() first"
        batch = {}
        for spec in self.signature.inputs:
            shape = (batch_size, *(dim if dim > 0 else 1 for dim in spec.shape[1:]))
            if spec.datatype == "BYTES":
                batch[spec.name] = np.full(shape, b"", dtype=np.object_)
            else:
                batch[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
        return batch
