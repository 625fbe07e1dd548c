"""The interface every runtime implements, and what the rest of Aegis may assume of it.

A runtime owns one loaded model on one device. The batcher calls `run` from a worker thread with
whole, already padded batches of numpy arrays; a runtime never sees HTTP and never batches.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from appliance.config import ModelConfig
from appliance.tensors import NUMPY_TO_DATATYPE, Signature, numpy_dtype

NO_DIMS: Mapping[str, int] = MappingProxyType({})


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


class CompileLedger:
    """A compiling runtime's totals, and whether its warmup has ended.

    Batches add to it from worker threads while scrapes read it: one lock, never held across a
    compilation, so a scrape does not wait behind one. Compilations after `end_warmup` are counted
    apart: each is a shape warmup did not cover.
    """

    def __init__(self) -> None:
        self._totals = RuntimeStats()
        self._lock = threading.Lock()
        self._warm = False

    def record(
        self,
        *,
        compiled: int = 0,
        cached: int = 0,
        compile_seconds: Sequence[float] = (),
        elapsed: float = 0.0,
        fallback_ops: Mapping[str, int] = NO_DIMS,
    ) -> int:
        """Add one call; its execute time is `elapsed` less its compile time. Returns how many of
        its compilations came after warmup."""
        with self._lock:
            totals = self._totals
            totals.compilations += compiled
            totals.cached_compilations += cached
            totals.compile_seconds += tuple(compile_seconds)
            totals.execute_seconds += max(0.0, elapsed - sum(compile_seconds))
            for name, count in fallback_ops.items():
                totals.fallback_ops[name] = totals.fallback_ops.get(name, 0) + count
            after_warmup = compiled if self._warm else 0
            totals.compilations_after_warmup += after_warmup
        return after_warmup

    def compiled_so_far(self) -> int:
        with self._lock:
            return len(self._totals.compile_seconds)

    def compile_seconds_since(self, compiled_before: int) -> tuple[float, ...]:
        with self._lock:
            return self._totals.compile_seconds[compiled_before:]

    def end_warmup(self) -> None:
        with self._lock:
            self._warm = True

    def stats(self) -> RuntimeStats:
        with self._lock:
            return dataclasses.replace(self._totals, fallback_ops=dict(self._totals.fallback_ops))


def check_buckets_fit(signature: Signature, config: ModelConfig, artifact: str) -> None:
    """Every size the batcher pads to lies within the artifact's limits: the batch buckets on
    axis 0 and each named dimension's buckets on its axes. Raises ArtifactError naming both."""
    specs = {spec.name: spec for spec in signature.inputs}
    for limit in signature.limits:
        spec = specs.get(limit.input)
        if spec is None or limit.axis >= len(spec.shape):
            continue
        dim = spec.shape[limit.axis]
        if limit.axis == 0 and limit.max is not None and config.max_batch_size > limit.max:
            raise ArtifactError(
                f"{artifact}: max_batch_size is {config.max_batch_size}, but input "
                f"{limit.input!r} dimension 0 (the batch) accepts at most {limit.max} (the "
                "export's Dim): lower max_batch_size or export with a wider Dim"
            )
        if limit.axis == 0:
            what, buckets, key = "batch", config.batch_buckets, "batch_buckets"
        elif isinstance(dim, str):
            what, buckets, key = repr(dim), config.dims[dim], f"dims.{dim}"
        else:
            continue  # unnamed: each request's own size is checked against the limit
        outside = [
            size
            for size in buckets
            if size < limit.min or (limit.max is not None and size > limit.max)
        ]
        if outside:
            allowed = f"{limit.min} .. {limit.max}" if limit.max is not None else f">= {limit.min}"
            raise ArtifactError(
                f"{artifact}: {key} pads {what} to {outside[0]}, but input {limit.input!r} "
                f"dimension {limit.axis} accepts {allowed} (the export's Dim): change {key} or "
                "export with a wider Dim"
            )


class Runtime(abc.ABC):
    """One model on one device. Subclasses set `signature` and `device` in `load`.

    Every runtime is built with these arguments (`appliance.runtimes.create_runtime` knows no
    runtime by name); one that has no use for an argument ignores it.
    """

    name: str = ""  # its row's name in appliance.config.runtime_table

    def __init__(
        self,
        config: ModelConfig,
        artifact: Path,
        *,
        device: str | None = None,
        compilation_cache_dir: str | None = None,
    ) -> None:
        self.config = config
        self.artifact = artifact
        # The device to open in `load`: the caller's (the CPU fallback passes "cpu"), else the
        # config's. `device` below is the one actually opened.
        self.requested_device = device or config.device
        # Where a compiling runtime keeps its compiled programs across restarts ([xla]).
        self.compilation_cache_dir = compilation_cache_dir
        self.signature: Signature | None = None
        self.device: str = "cpu"

    @abc.abstractmethod
    def load(self) -> None:
        """Load the artifact onto the device and resolve the signature. Blocking."""

    @abc.abstractmethod
    def read_signature(self, path: Path) -> Signature:
        """The artifact file's own signature (see `signature`), read without opening a device:
        what `aegis check-config` and `aegis inspect` look at."""

    @abc.abstractmethod
    def settle_signature(self, found: Signature, artifact: str) -> Signature:
        """The signature this runtime serves for `found` and the config, or ArtifactError naming
        what to change: the checks `load` makes, none of which need the device."""

    @abc.abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: every array has the same leading (batch) dimension. Thread-safe."""

    def warmup(self, batch_size: int, dims: Mapping[str, int] = NO_DIMS) -> None:
        """Run one batch of zeros of `batch_size` rows, each named dimension at its size in
        `dims`, so the first real request of that shape is not slow; and check that what the
        model returns is what its signature declares."""
        self.check_outputs(self.run(self.zeros(batch_size, dims)), batch_size)

    def check_outputs(self, outputs: dict[str, np.ndarray], batch_size: int) -> None:
        """ArtifactError unless `outputs` are the signature's, in datatype and shape.

        A TorchScript signature is only declared, and a declaration the model does not keep would
        send replies whose bytes do not match their datatype.
        """
        assert self.signature is not None, "load() first"
        where = self.artifact.name
        for spec in self.signature.outputs:
            array = outputs.get(spec.name)
            if array is None:
                raise ArtifactError(f"{where}: the model returned no output {spec.name!r}")
            want = numpy_dtype(spec.datatype)
            if array.dtype != want:
                got = NUMPY_TO_DATATYPE.get(array.dtype, str(array.dtype))
                raise ArtifactError(
                    f"{where}: output {spec.name!r} is declared {spec.datatype}, "
                    f"the model returns {got}"
                )
            expected = (batch_size, *spec.shape[1:])
            if array.ndim != len(expected) or any(
                isinstance(want_dim, int) and want_dim not in (-1, got_dim)
                for want_dim, got_dim in zip(expected, array.shape, strict=True)
            ):
                raise ArtifactError(
                    f"{where}: output {spec.name!r} is declared {list(spec.shape)}, the model "
                    f"returns {list(array.shape)} for a batch of {batch_size}"
                )

    def finish_warmup(self) -> None:
        """Called once every bucket has been warmed: anything compiled after this is a defect."""

    def stats(self) -> RuntimeStats:
        return RuntimeStats()

    def close(self) -> None:
        """Release the device memory held by the model."""

    def zeros(self, batch_size: int, dims: Mapping[str, int] = NO_DIMS) -> dict[str, np.ndarray]:
        """A batch of zeros that fits the signature: named dimensions at their size in `dims`
        (the smallest bucket where not given), unnamed variable ones at 1."""
        assert self.signature is not None, "load() first"
        batch = {}
        for spec in self.signature.inputs:
            shape = (batch_size, *(self._warmup_size(dim, dims) for dim in spec.shape[1:]))
            if spec.datatype == "BYTES":
                batch[spec.name] = np.full(shape, b"", dtype=np.object_)
            else:
                batch[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
        return batch

    def _warmup_size(self, dim: int | str, dims: Mapping[str, int]) -> int:
        if isinstance(dim, str):
            return dims.get(dim, self.config.dims[dim][0])
        return dim if dim > 0 else 1
