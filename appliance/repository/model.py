"""A served model version: the checks its requests pass, its readiness, and where it runs.

`ServedModel` is what the data plane and the front doors see; `LocalModel` runs in this process
(its runtimes and batchers), and a front-end process holds models that run in an engine process
(`appliance.channel`).
"""

from __future__ import annotations

import abc
import asyncio
import enum
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from appliance.batching import (
    BatchingPolicy,
    BatchObserver,
    BatchResult,
    DynamicBatcher,
    NamedDims,
    Progress,
    Queued,
)
from appliance.config import ModelConfig
from appliance.errors import InvalidInput, ModelNotReady, QueueFull
from appliance.metrics import ModelMetrics
from appliance.runtimes import Runtime
from appliance.tensors import Signature, TensorSpec, shape_matches


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


@dataclass(frozen=True, slots=True)
class Replica:
    """A loaded runtime with its own batcher and worker threads."""

    runtime: Runtime
    batcher: DynamicBatcher
    executor: ThreadPoolExecutor


def _policy(config: ModelConfig, signature: Signature) -> BatchingPolicy:
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        buckets=config.batch_buckets,
        max_queue_delay_s=config.max_queue_delay_ms / 1000.0,
        max_concurrency=config.max_concurrency,
        max_queue_size=config.max_queue_size,
        dims=NamedDims.of(signature, config.dims),
    )


def make_replica(
    name: str,
    runtime: Runtime,
    config: ModelConfig,
    metrics: ModelMetrics,
    warm_times: dict[int, float] | None = None,
) -> Replica:
    """A batcher in front of `runtime`, its batch times seeded with warmup's; call from the
    event loop."""
    executor = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix=f"aegis-{name}")
    observer = BatchObserver(
        on_batch=metrics.observe_batch,
        on_dequeue=metrics.observe_queue_times,
        on_depth=metrics.queue_depth.set,
        on_failure=metrics.observe_failure,
        on_average=metrics.batch_average(runtime.device),
        # Counted once served: a request the CPU replica also refuses was not served by it.
        on_fallback=metrics.count_fallback,
    )
    assert runtime.signature is not None, "replicas hold loaded runtimes"
    policy = _policy(config, runtime.signature)
    batcher = DynamicBatcher(runtime.run, policy, executor, observer)
    batcher.seed_times(warm_times or {})
    batcher.start()
    return Replica(runtime, batcher, executor)


@dataclass(frozen=True)
class ModelView:
    """What a model's requests are checked against and its metadata says, without the model:
    an engine process publishes it to the front ends (pickled), which serve from it."""

    name: str
    version: str
    config: ModelConfig
    signature: Signature
    device: str
    runtime_name: str
    artifact_suffix: str
    fingerprint: str
    labels: tuple[str, ...]


class ServedModel(abc.ABC):
    """One version of one model, as the data plane sees it."""

    def __init__(
        self,
        name: str,
        version: str,
        config: ModelConfig,
        signature: Signature,
        metrics: ModelMetrics,
        fingerprint: str = "",
        labels: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.labels = labels  # class labels, by index, for classification results
        self.signature = signature
        self.state = ModelState.READY
        self.successor: ServedModel | None = None
        self._inputs = {spec.name: spec for spec in self.signature.inputs}
        # The batch and named dimensions are padded to buckets that load checked against the
        # limits; only an unnamed dynamic axis reaches the model at the request's own size.
        self._request_limits = tuple(
            limit
            for limit in self.signature.limits
            if limit.axis > 0
            and limit.input in self._inputs
            and limit.axis < len(self._inputs[limit.input].shape)
            and self._inputs[limit.input].shape[limit.axis] == -1
        )
        self._outputs = {spec.name: spec for spec in self.signature.outputs}
        # (input, axis, dimension name) of every named dimension, found once.
        self._named_axes = tuple(
            (spec.name, axis, dim)
            for spec in self.signature.inputs
            for axis, dim in spec.named_axes()
        )

    @property
    @abc.abstractmethod
    def device(self) -> str: ...

    @property
    @abc.abstractmethod
    def runtime_name(self) -> str:
        """Its runtime's row in appliance.config.runtime_table."""

    @property
    @abc.abstractmethod
    def artifact_suffix(self) -> str: ...

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def current(self) -> ServedModel:
        """The version that takes a request looked up as this one: this, or, once it was swapped
        out after the caller looked it up, the version that replaced it."""
        model: ServedModel = self
        while model.state is ModelState.UNLOADING and model.successor is not None:
            model = model.successor
        return model

    def view(self) -> ModelView:
        return ModelView(
            self.name,
            self.version,
            self.config,
            self.signature,
            self.device,
            self.runtime_name,
            self.artifact_suffix,
            self.fingerprint,
            self.labels,
        )

    def output_spec(self, name: str) -> TensorSpec:
        try:
            return self._outputs[name]
        except KeyError:
            known = ", ".join(self._outputs)
            raise InvalidInput(
                f"model {self.name!r} has no output {name!r} (outputs: {known})"
            ) from None

    def check_inputs(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> int:
        """Check `inputs` against the signature; returns the request's batch rows."""
        for name in inputs:
            if name not in self._inputs:
                known = ", ".join(self._inputs)
                raise InvalidInput(f"model {self.name!r} has no input {name!r} (inputs: {known})")
        rows = -1
        for spec in self.signature.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(f"input {spec.name!r} is missing")
            if datatypes[spec.name] != spec.datatype:
                raise InvalidInput(
                    f"input {spec.name!r} must be {spec.datatype}, got {datatypes[spec.name]}"
                )
            if not shape_matches(spec.shape, array.shape):
                raise InvalidInput(
                    f"input {spec.name!r} has shape {list(array.shape)}, "
                    f"the model takes {list(spec.shape)} (-1: any size)"
                )
            if array.size == 0 and array.shape[0] > 0:
                # Nothing to infer on, and on XLA a shape that warmup never compiled.
                raise InvalidInput(
                    f"input {spec.name!r} has shape {list(array.shape)}: a dimension of size 0 "
                    "holds no data to infer on"
                )
            if rows not in (-1, array.shape[0]):
                raise InvalidInput(
                    f"input {spec.name!r} has {array.shape[0]} rows, other inputs have {rows}"
                )
            rows = array.shape[0]
        if rows < 1:
            raise InvalidInput("the batch dimension must be at least 1")
        if self._named_axes:
            self._check_named_dims(inputs)
        if self._request_limits:
            self._check_limits(inputs)
        if rows > self.config.max_batch_size:
            raise InvalidInput(
                f"the request has {rows} rows, max_batch_size of {self.name!r} "
                f"is {self.config.max_batch_size}"
            )
        return rows

    def _check_named_dims(self, inputs: dict[str, np.ndarray]) -> None:
        """Inputs that share a named dimension agree on its length, within its largest bucket."""
        seen: dict[str, tuple[str, int]] = {}
        for name, axis, dim in self._named_axes:
            length = inputs[name].shape[axis]
            largest = self.config.dims[dim][-1]
            if length > largest:
                raise InvalidInput(
                    f"input {name!r} has {dim} = {length} (dimension {axis}), past the "
                    f"largest bucket of {dim!r} ({largest})"
                )
            if dim in seen and seen[dim][1] != length:
                other, other_length = seen[dim]
                raise InvalidInput(
                    f"input {name!r} has {dim} = {length}, input {other!r} has "
                    f"{dim} = {other_length}: inputs sharing a dimension must agree"
                )
            seen.setdefault(dim, (name, length))

    def _check_limits(self, inputs: dict[str, np.ndarray]) -> None:
        """The sizes the artifact accepts (torch.export `Dim(min, max)`), and its tied axes."""
        tied: dict[str, tuple[str, int, int]] = {}
        for limit in self._request_limits:
            size = inputs[limit.input].shape[limit.axis]
            where = f"input {limit.input!r} dimension {limit.axis}"
            if size < limit.min or (limit.max is not None and size > limit.max):
                allowed = (
                    f"{limit.min} .. {limit.max}" if limit.max is not None else f">= {limit.min}"
                )
                raise InvalidInput(
                    f"{where} has size {size}, outside what the model accepts ({allowed})"
                )
            if limit.symbol in tied and tied[limit.symbol][2] != size:
                other, other_axis, other_size = tied[limit.symbol]
                raise InvalidInput(
                    f"{where} has size {size}, input {other!r} dimension {other_axis} has "
                    f"{other_size}: the model takes them equal"
                )
            tied.setdefault(limit.symbol, (limit.input, limit.axis, size))

    @abc.abstractmethod
    def check_room(self) -> None:
        """Refuse (QueueFull) before the request is decoded when it could not be queued: under
        overload the refusal is the common answer, so it must cost little."""

    @abc.abstractmethod
    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        deadline: float,
        progress: Progress | None = None,
    ) -> BatchResult:
        """Run the checked request (`rows` rows) and return its outputs by `deadline`;
        `progress` hears when the batch that runs it starts and ends."""

    @abc.abstractmethod
    async def retire(self, grace_s: float) -> None:
        """Stop taking requests and let queued ones finish (bounded by `grace_s`)."""


class LocalModel(ServedModel):
    """A model version whose runtimes and batchers are in this process."""

    def __init__(
        self,
        name: str,
        version: str,
        config: ModelConfig,
        primary: Replica,
        metrics: ModelMetrics,
        overflow: Replica | None = None,
        fingerprint: str = "",
        labels: tuple[str, ...] = (),
        stand_in: bool = False,
    ) -> None:
        """`overflow`: the CPU replica of `cpu_fallback` "overflow" or "latency"; `stand_in`:
        `primary` is a CPU replica serving because the device could not be opened."""
        assert primary.runtime.signature is not None, "replicas hold loaded runtimes"
        super().__init__(
            name, version, config, primary.runtime.signature, metrics, fingerprint, labels
        )
        self.primary = primary
        self.overflow = overflow
        self.stand_in = stand_in
        self._route_by_latency = overflow is not None and config.cpu_fallback == "latency"

    @property
    def device(self) -> str:
        return self.primary.runtime.device

    @property
    def runtime_name(self) -> str:
        return self.primary.runtime.name

    @property
    def artifact_suffix(self) -> str:
        return self.primary.runtime.artifact.suffix

    def check_room(self) -> None:
        """Refuse before the request is decoded when no replica could queue it.

        Under overload the refusal is the common answer, so it must cost little; `infer` still
        checks at the queue itself, which settles the race with requests decoded meanwhile.
        """
        if self.state is not ModelState.READY or self.primary.batcher.has_room:
            return
        if self.overflow is not None and self.overflow.batcher.has_room:
            return
        raise QueueFull(f"queue full ({self.config.max_queue_size} requests waiting)")

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        deadline: float,
        progress: Progress | None = None,
    ) -> BatchResult:
        return await self.enqueue(inputs, rows, deadline, progress).result()

    def enqueue(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        deadline: float,
        progress: Progress | None = None,
    ) -> Queued:
        """`infer` without the wait: queue the request on the primary replica, or on the CPU
        replica: when the primary's queue is full (`overflow`, `latency`), or when the CPU is
        predicted to answer it first (`latency`)."""
        model = self.current()
        if model is not self:
            assert isinstance(model, LocalModel), "a local model is replaced by a local one"
            return model.enqueue(inputs, rows, deadline, progress)
        if self.state is not ModelState.READY:
            raise ModelNotReady(f"model {self.name!r} version {self.version!r} is not ready")
        if self._route_by_latency and self._cpu_answers_first(rows):
            assert self.overflow is not None
            try:
                return self.overflow.batcher.enqueue(inputs, rows, deadline, progress, "latency")
            except QueueFull:
                pass  # the CPU's own bounded queue is full: the device queues it after all
        try:
            return self.primary.batcher.enqueue(
                inputs, rows, deadline, progress, "unavailable" if self.stand_in else None
            )
        except QueueFull:
            if self.overflow is None:
                raise
            return self.overflow.batcher.enqueue(inputs, rows, deadline, progress, "overflow")

    def _cpu_answers_first(self, rows: int) -> bool:
        """Whether the CPU replica is predicted to answer `rows` rows sooner than the device.

        Only a small request (one that fits the smallest batch bucket) that would wait on the
        device is considered: an idle device keeps its traffic, so a quiet model never moves to
        the CPU on estimates alone, and large requests, which the device batches best, stay on
        it, so the CPU's cores go to the interactive requests that gain most.
        """
        assert self.overflow is not None
        device = self.primary.batcher
        if rows > self.config.batch_buckets[0] or not device.would_wait:
            return False
        cpu_s = self.overflow.batcher.estimate_s(rows)
        device_s = device.estimate_s(rows)
        return cpu_s is not None and device_s is not None and cpu_s < device_s

    def replicas(self) -> list[Replica]:
        return [self.primary] + ([self.overflow] if self.overflow else [])

    async def retire(self, grace_s: float) -> None:
        """Stop taking requests, let queued ones finish (bounded by `grace_s`), free the device."""
        self.state = ModelState.UNLOADING
        self.metrics.remove(self.device)
        for replica in self.replicas():
            await replica.batcher.drain(grace_s)
        for replica in self.replicas():
            replica.executor.shutdown(wait=False)
            await asyncio.to_thread(replica.runtime.close)
