"""The `tpu` runtime: PyTorch/XLA on a Cloud TPU, or on the CPU (XLA:CPU) with PJRT_DEVICE=CPU.

It is the torch runtime with an XLA device: the same artifact rules, signature and output naming,
plus what XLA needs. Every distinct input shape compiles a program, so the batcher pads batches
(and named dimensions) to the configured buckets and warmup compiles each shape once; later batches
of a shape replay its program without running the model's Python (`xla_replay`). A model whose
trace cannot be replayed is traced lazily on every batch, and says so in the log. A compilation
after `finish_warmup` is logged with the shapes that caused it and counted. Compilations, compile
times and the ops that fell back to the CPU come from `torch_xla.debug.metrics`, attributed to the
runtime that ran.

torch_xla is imported only here, and only in `load`: a host without it can import this module, and
a missing or mismatched torch_xla surfaces as `DeviceUnavailable` for the CPU-fallback policy.

The PJRT device type is process-wide: PJRT_DEVICE from the environment when set (the XLA test tier
runs PJRT_DEVICE=CPU), otherwise TPU. It is set explicitly because torch_xla would otherwise quietly
pick XLA:CPU on a host without a TPU, and a `tpu` model would run there as if nothing were wrong.
"""

from __future__ import annotations

import dataclasses
import os
import threading
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
from appliance.runtimes.base import (
    NO_DIMS,
    ArtifactError,
    CompileLedger,
    DeviceUnavailable,
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

# One lock for the process's XLA device, shared by every XlaRuntime, held while a batch is traced,
# compiled and executed lazily, and while a compiled program is launched. Why:
# - `torch_xla.sync()` materialises every pending lazy tensor of the device, not just the caller's,
#   and a trace clears every pending tensor when it is done: two threads tracing at once would cut
#   each other's graphs at arbitrary points, giving programs that warmup never compiled
#   (recompiles while serving) and outputs computed in a foreign graph.
# - torch_xla's metrics are process-wide; holding the lock makes a counter delta taken around one
#   trace belong to that trace and model.
# A replayed batch holds the lock only to launch its program: its inputs are copied to the device
# before, and its outputs copied back after, so with max_concurrency > 1 one batch's host work
# (decoding, padding, copies) overlaps another's device work.
_DEVICE_LOCK = threading.Lock()


@dataclass(frozen=True)
class _XlaDevice:
    """The opened XLA device of this process, and the torch_xla modules that drive it."""

    torch_xla: ModuleType
    xr: ModuleType  # torch_xla.runtime
    metrics: ModuleType
    bridge: ModuleType | None  # torch_xla._dynamo.dynamo_bridge: compile once, replay
    device: torch.device
    label: str  # what `Runtime.device` reports, e.g. "xla:tpu:0" or "xla:cpu:0"


_opened: _XlaDevice | None = None
_cache_configured = False


def _pjrt_device() -> str:
    # The config only allows device = "tpu" with runtime = "tpu"; PJRT_DEVICE=CPU runs XLA:CPU.
    return os.environ.get("PJRT_DEVICE", "TPU").upper()


def _open_device(pjrt_device: str) -> _XlaDevice:
    """Import torch_xla and open the process's XLA device; call with `_DEVICE_LOCK` held."""
    global _opened
    if _opened is not None:
        return _opened
    # torch_xla picks its device type at import: name it first.
    os.environ.setdefault("PJRT_DEVICE", pjrt_device)
    try:
        import torch_xla
        import torch_xla.debug.metrics
        import torch_xla.runtime
        from torch_xla._internal import tpu
    except Exception as error:  # ImportError, or an undefined symbol against the wrong torch
        raise DeviceUnavailable(
            f"torch_xla cannot be imported ({type(error).__name__}: {error}); install the matching "
            "torch, torch-xla and libtpu of the aegis_tpu_runtime role (requirements-tpu.txt)"
        ) from None
    if pjrt_device == "TPU":
        # Without a TPU, libtpu retries the GCE metadata server for many minutes before it gives
        # up (seen: over 5 min): check for the chips first, the way torch_xla does to pick a device.
        if not torch_xla._found_libtpu:
            raise DeviceUnavailable("PJRT_DEVICE=TPU, but libtpu is not installed")
        if tpu.num_available_chips() == 0:
            raise DeviceUnavailable("PJRT_DEVICE=TPU, but this host has no TPU chip on its PCI bus")
    try:
        device = torch_xla.device()
        real = torch_xla.real_devices()[0]
    except Exception as error:  # PJRT client creation: busy TPU, wrong topology, missing plugin
        raise DeviceUnavailable(f"the XLA device {pjrt_device} cannot be opened: {error}") from None
    try:
        from torch_xla._dynamo import dynamo_bridge
    except ImportError as error:  # a private module: a later torch_xla may move it
        log.warning(
            "xla_replay_unavailable", consequence="every batch is traced", reason=str(error)
        )
        dynamo_bridge = None
    _opened = _XlaDevice(
        torch_xla,
        torch_xla.runtime,
        torch_xla.debug.metrics,
        dynamo_bridge,
        device,
        f"xla:{real.lower()}",
    )
    log.info(
        "xla_device_opened",
        device=_opened.label,
        pjrt_device=pjrt_device,
        torch_xla=torch_xla.__version__,
    )
    return _opened


def _configure_cache(xla: _XlaDevice, base: str | None) -> None:
    """Point the persistent compilation cache at this process's folder; `_DEVICE_LOCK` held.

    XLA reads the setting once, before its first compilation, so only the first call counts.
    The folder is one per device type and ordinal (two processes never share one TPU chip) and per
    torch_xla version (executables do not carry across versions), and stable across restarts,
    which is what the cache is for. XLA:CPU writes entries but cannot read them back.
    """
    global _cache_configured
    if _cache_configured or not base:
        return
    _cache_configured = True
    if xla.torch_xla._XLAC._xla_computation_cache_is_initialized():
        log.warning(
            "xla_compilation_cache_not_configured",
            reason="XLA compiled before the first tpu model",
        )
        return
    folder = Path(base) / (
        f"torch_xla-{xla.torch_xla.__version__}-"
        f"{xla.xr.device_type().lower()}-{xla.xr.global_ordinal()}"
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("xla_compilation_cache_disabled", folder=str(folder), reason=str(error))
        return
    xla.xr.initialize_cache(str(folder), readonly=False)
    log.info("xla_compilation_cache", folder=str(folder))


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
        self._xla: _XlaDevice | None = None
        self._ledger = CompileLedger()
        self._fallback_reported: set[str] = set()
        # Compiled programs by input shapes; a model whose trace cannot be replayed gets none.
        self._programs: dict[tuple[tuple[int, ...], ...], Program] = {}
        self._replayable = True

    def load(self) -> None:
        with _DEVICE_LOCK:
            self._xla = _open_device(_pjrt_device())
            _configure_cache(self._xla, self.compilation_cache_dir)
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
        with _DEVICE_LOCK, self._measured({}):
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
                with _DEVICE_LOCK:
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
        with _DEVICE_LOCK, torch.no_grad():
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
        """Trace and compile the program for these shapes; `_DEVICE_LOCK` held. None, and the
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

        Call with `_DEVICE_LOCK` held. Accounts even when the block fails: a compilation is never
        silent. Execute time is the block's wall time less its compile time: upload, run, download.
        Ops that fell back are not counted when `count_fallbacks` is false (a trace whose batch is
        then run again, and counted, lazily).
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
