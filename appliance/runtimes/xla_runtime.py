"""The `tpu` runtime: PyTorch/XLA on a Cloud TPU, or on the CPU (XLA:CPU) with PJRT_DEVICE=CPU.

It is the torch runtime with an XLA device: the same artifact rules, signature and output naming,
plus what XLA needs. Every distinct input shape compiles a program, so the batcher pads batches
(and named dimensions) to the configured buckets and warmup compiles each shape once; later batches
of a shape replay its program without running the model's Python (`xla_replay`). A model whose
trace cannot be replayed is traced lazily on every batch, and says so in the log. A compilation
after `finish_warmup` is logged with the shapes that caused it and counted. Compilations, compile
times and the ops that fell back to the CPU come from `torch_xla.debug.metrics`, attributed to the
runtime that ran.

`load` gets the XLA device from `xla_process`, which sets it up once for the whole process (device
type, device lock, cache). torch_xla is imported only there, so a host without it imports this
module unchanged, and a missing or mismatched torch_xla fails `load` with `DeviceUnavailable`, for
the CPU-fallback policy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import structlog
import torch

from appliance.config import ModelConfig
from appliance.runtimes import xla_process
from appliance.runtimes.base import (
    NO_DIMS,
    ArtifactError,
    CompileLedger,
    ModelExecutionError,
    RuntimeStats,
)
from appliance.runtimes.exported import (
    ExportedForward,
    exported_signature_as_declared,
    load_exported,
)
from appliance.runtimes.torch_runtime import TorchRuntime
from appliance.runtimes.torch_tensors import to_tensor
from appliance.runtimes.xla_replay import Program, trace_program
from appliance.tensors import Signature

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Counters:
    """The process-wide torch_xla counters this runtime attributes to itself, at one moment."""

    uncached: int
    cached: int
    compile_samples: int
    fallback_ops: dict[str, int]

    @classmethod
    def read(cls, metrics: ModuleType) -> _Counters:
        compile_time = metrics.metric_data("CompileTime")  # None until the first compilation
        return cls(
            uncached=metrics.counter_value("UncachedCompile") or 0,
            cached=metrics.counter_value("CachedCompile") or 0,
            compile_samples=compile_time[0] if compile_time else 0,
            fallback_ops={
                name: metrics.counter_value(name)
                for name in metrics.counter_names()
                if name.startswith("aten::")
            },
        )


def _compile_seconds_since(metrics: ModuleType, samples_before: int) -> tuple[float, ...]:
    """Durations of the compilations after the first `samples_before` (CompileTime is in ns)."""
    compile_time = metrics.metric_data("CompileTime")
    if not compile_time or compile_time[0] <= samples_before:
        return ()
    total, _accumulated, samples = compile_time
    # The metric keeps its latest samples in a ring far larger than one batch's compilations.
    return tuple(value / 1e9 for _when, value in samples[-(total - samples_before) :])


@dataclass
class _Window:
    """What one measured block did, known once it has ended."""

    fell_back: tuple[str, ...] = ()


class XlaRuntime(TorchRuntime):
    name = "tpu"

    def __init__(
        self,
        config: ModelConfig,
        artifact: Path,
        *,
        device: str | None = None,
        compilation_cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            config, artifact, device=device, compilation_cache_dir=compilation_cache_dir
        )
        self._xla: xla_process.XlaProcess | None = None
        self._ledger = CompileLedger()
        self._fallback_reported: set[str] = set()
        # Compiled programs by input shapes; a model whose trace cannot be replayed gets none.
        self._programs: dict[tuple[tuple[int, ...], ...], Program] = {}
        self._replayable = True

    def load(self) -> None:
        self._xla = xla_process.configure(self.compilation_cache_dir)
        # The artifact is read on the CPU by the torch runtime's rules; only the move to the device
        # holds the device lock, so a reload stalls the models being served as little as it can.
        super().load()
        self.device = self._xla.label
        self._replayable = self._xla.bridge is not None and self._replay_reason() is None
        if not self._replayable:
            log.warning(
                "xla_program_not_replayable",
                consequence="every batch is traced lazily",
                artifact=self.artifact.name,
                reason=self._replay_reason() or "torch_xla has no dynamo bridge",
            )

    def _replay_reason(self) -> str | None:
        """Why replaying one trace per shape could differ from running the model; None: it can't.

        An exported program is a static graph: one trace per shape records all it does. A
        TorchScript model may branch on tensor values in code that one trace would freeze."""
        if not isinstance(self._forward, ExportedForward):
            return "a TorchScript model may branch on values; export with torch.export (.pt2)"
        if not self._forward.static:
            return "the exported graph reads tensor values into Python (.item())"
        return None

    def settle_signature(self, found: Signature, artifact: str) -> Signature:
        signature = super().settle_signature(found, artifact)
        self._check_static_shapes(signature, artifact)
        return signature

    def _check_static_shapes(self, signature: Signature, artifact: str) -> None:
        # The config refuses a declared dynamic dimension without buckets; an undeclared
        # signature comes from the artifact, and is checked here.
        for spec in signature.inputs:
            for axis, dim in enumerate(spec.shape[1:], start=1):
                if dim == -1:
                    raise ArtifactError(
                        f"{artifact}: input {spec.name!r} dimension {axis} is dynamic "
                        "without buckets, and XLA compiles one program per size: declare the "
                        'input with a named dimension (shape = [-1, "seq"]) and its buckets in '
                        "[models.dims]"
                    )

    def _open_device(self) -> torch.device:
        assert self._xla is not None
        return self._xla.device

    def _load_exported(self, path: Path) -> tuple[Callable[..., Any], Signature]:
        program = load_exported(path)
        found, order = exported_signature_as_declared(program, self.config)
        # Weights, constants and the device arguments of the graph's own tensor factories.
        with self._moving_to_device():
            forward = ExportedForward(program, self._torch_device, order)
        return forward, found

    def _load_torchscript(self, path: Path) -> torch.jit.ScriptModule:
        module = self._cpu_loader()._load_torchscript(path)
        # torch.jit.load onto an XLA device fails (pytorch/pytorch#96448), map_location included,
        # and so does ScriptModule.to(xla): re-home every parameter and buffer, module by module.
        with self._moving_to_device():
            for submodule in module.modules():
                tensors = [
                    *submodule.named_parameters(recurse=False),
                    *submodule.named_buffers(recurse=False),
                ]
                for name, tensor in tensors:
                    # _c is the C++ ScriptModule, which torch types as a Tensor or Module.
                    submodule._c.setattr(name, tensor.detach().to(self._torch_device))  # type: ignore[union-attr,operator]
        return module

    def _cpu_loader(self) -> TorchRuntime:
        return TorchRuntime(self.config, self.artifact, device="cpu")

    @contextmanager
    def _moving_to_device(self) -> Iterator[None]:
        """Hold the device while weights move, then sync: nothing the move left pending may join
        another batch's graph. Anything it compiled is counted, like any compilation."""
        assert self._xla is not None
        with self._xla.lock, self._measured({}):
            yield
            self._xla.torch_xla.sync()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._forward is not None and self.signature is not None, "load() first"
        specs = self.signature.inputs
        host = [to_tensor(inputs[spec.name], spec.datatype) for spec in specs]
        program = self._programs.get(tuple(tuple(tensor.shape) for tensor in host))
        if program is None:
            return self._run_new_shape(host)
        assert self._xla is not None
        xlac = self._xla.torch_xla._XLAC
        started = time.perf_counter()
        try:
            with torch.no_grad():
                # One transfer each way for all the tensors: per tensor, `.to()` and `.cpu()`
                # cost a deep model's batch on XLA:CPU half a millisecond more.
                devices = [str(self._torch_device)] * len(host)
                device_inputs = xlac._xla_tensors_from_aten(host, devices, None)
                with self._xla.lock:
                    outputs = program(*device_inputs)
                # Waits for the device, outside the lock.
                named = self._name_outputs(xlac._xla_get_cpu_tensors(outputs))
        except Exception as error:
            raise ModelExecutionError(f"{type(error).__name__}: {error}") from error
        self._ledger.record(cached=1, elapsed=time.perf_counter() - started)
        return named

    def _run_new_shape(self, host: list[torch.Tensor]) -> dict[str, np.ndarray]:
        """A shape with no program yet: compile one and run it, or trace this batch lazily."""
        assert self._xla is not None and self.signature is not None
        assert self._forward is not None
        shapes = {
            spec.name: tuple(t.shape) for spec, t in zip(self.signature.inputs, host, strict=True)
        }
        with self._xla.lock, torch.no_grad():
            try:
                device_inputs = [tensor.to(self._torch_device) for tensor in host]
                program = self._compile(shapes, device_inputs) if self._replayable else None
                with self._measured(shapes):
                    if program is not None:
                        outputs = program(*device_inputs)
                    else:
                        outputs = self._forward(*device_inputs)
                        # One program per batch, outputs included: compile or reuse, execute.
                        self._xla.torch_xla.sync()
                    named = self._name_outputs(outputs)
            except Exception as error:
                raise ModelExecutionError(f"{type(error).__name__}: {error}") from error
        if program is not None:
            self._ledger.record(cached=1)  # the first replay of the new program
        return named

    def _compile(
        self, shapes: dict[str, tuple[int, ...]], device_inputs: list[torch.Tensor]
    ) -> Program | None:
        """Trace and compile the program for these shapes; the device lock held. None, and the
        model served lazily from now on, when the trace had to execute on its way."""
        assert self._xla is not None and self._xla.bridge is not None
        assert self.signature is not None and self._forward is not None
        names = [spec.name for spec in self.signature.outputs]
        with self._measured(shapes, count_fallbacks=False) as window:
            program = trace_program(self._xla.bridge, self._forward, names, device_inputs)
        if window.fell_back:
            # The trace ran part of the graph to feed the CPU op: its program is only the rest.
            self._replayable = False
            self._programs.clear()
            log.warning(
                "xla_program_not_replayable",
                consequence="every batch is traced lazily",
                artifact=self.artifact.name,
                reason=f"ops fall back to the CPU: {', '.join(window.fell_back)}",
            )
            return None
        self._programs[tuple(shapes.values())] = program
        return program

    def warmup(self, batch_size: int, dims: Mapping[str, int] = NO_DIMS) -> None:
        compiled_before = self._ledger.compiled_so_far()
        super().warmup(batch_size, dims)
        seconds = self._ledger.compile_seconds_since(compiled_before)
        log.info(
            "xla_warmup",
            artifact=self.artifact.name,
            batch_size=batch_size,
            dims=dict(dims),
            compilations=len(seconds),
            compile_seconds=round(sum(seconds), 4),
        )

    def finish_warmup(self) -> None:
        self._ledger.end_warmup()
        totals = self.stats()
        log.info(
            "xla_warm",
            artifact=self.artifact.name,
            device=self.device,
            compilations=totals.compilations,
            compile_seconds=round(sum(totals.compile_seconds), 4),
            fallback_ops=totals.fallback_ops,
        )

    def stats(self) -> RuntimeStats:
        return self._ledger.stats()

    @contextmanager
    def _measured(
        self, shapes: dict[str, tuple[int, ...]], *, count_fallbacks: bool = True
    ) -> Iterator[_Window]:
        """Attribute what XLA compiled, executed and fell back on inside the block to this runtime.

        Call with the device lock (`XlaProcess.lock`) held. Accounts even when the block fails: a
        compilation is never silent. Execute time is the block's wall time less its compile time:
        upload, run, download. Ops that fell back are not counted when `count_fallbacks` is false
        (a trace whose batch is then run again, and counted, lazily).
        """
        assert self._xla is not None
        metrics = self._xla.metrics
        before = _Counters.read(metrics)
        started = time.perf_counter()
        window = _Window()
        try:
            yield window
        finally:
            elapsed = time.perf_counter() - started
            after = _Counters.read(metrics)
            window.fell_back = tuple(
                sorted(
                    name
                    for name, count in after.fallback_ops.items()
                    if count > before.fallback_ops.get(name, 0)
                )
            )
            if not count_fallbacks:
                after = dataclasses.replace(after, fallback_ops=before.fallback_ops)
            self._account(
                before,
                after,
                _compile_seconds_since(metrics, before.compile_samples),
                elapsed,
                shapes,
            )

    def _account(
        self,
        before: _Counters,
        after: _Counters,
        compile_seconds: tuple[float, ...],
        elapsed: float,
        shapes: dict[str, tuple[int, ...]],
    ) -> None:
        compiled = after.uncached - before.uncached
        fell_back = {
            name: count - before.fallback_ops.get(name, 0)
            for name, count in after.fallback_ops.items()
            if count > before.fallback_ops.get(name, 0)
        }
        after_warmup = self._ledger.record(
            compiled=compiled,
            cached=after.cached - before.cached,
            compile_seconds=compile_seconds,
            elapsed=elapsed,
            fallback_ops=fell_back,
        )
        if after_warmup:
            log.warning(
                "xla_compiled_after_warmup",
                reason="warmup did not cover this batch",
                artifact=self.artifact.name,
                input_shapes={name: list(shape) for name, shape in shapes.items()},
                compilations=after_warmup,
                compile_seconds=round(sum(compile_seconds), 4),
            )
        new_fallbacks = sorted(fell_back.keys() - self._fallback_reported)
        if new_fallbacks:
            self._fallback_reported.update(new_fallbacks)
            log.warning("xla_ops_fall_back_to_cpu", artifact=self.artifact.name, ops=new_fallbacks)
