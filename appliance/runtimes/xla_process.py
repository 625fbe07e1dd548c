"""The process-wide PyTorch/XLA setup: which device type torch_xla opens, the opened device and the
torch_xla modules that drive it, the lock every `tpu` model holds to use it, and where compiled
programs are cached. Everything torch_xla holds for the whole process is set here, once, by the
first `tpu` model's load (`configure`); the `tpu` runtime only uses what it gets back.

- Device type: PJRT_DEVICE from the environment when set (the XLA test tier runs PJRT_DEVICE=CPU),
  otherwise TPU. It is set explicitly because torch_xla would otherwise quietly pick XLA:CPU on a
  host without a TPU, and a `tpu` model would run there as if nothing were wrong.
- Cache: torch_xla's persistent compilation cache in
  `<xla.compilation_cache_dir>/torch_xla-<version>-<device type>-<ordinal>`, set by the first call
  given a folder (XLA reads the setting once, before its first compilation).

torch_xla is imported only inside `configure`: a host without it imports this module unchanged, and
a missing or mismatched torch_xla surfaces as `DeviceUnavailable` for the CPU-fallback policy.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import structlog
import torch

from appliance.runtimes.base import DeviceUnavailable

log = structlog.get_logger("aegis.runtimes")


@dataclass
class XlaProcess:
    """The opened XLA device of this process, the torch_xla modules that drive it, whether its
    compilation cache is set, and the lock that uses of the device take turns on."""

    torch_xla: ModuleType
    xr: ModuleType  # torch_xla.runtime
    metrics: ModuleType
    bridge: ModuleType | None  # torch_xla._dynamo.dynamo_bridge: compile once, replay
    device: torch.device
    label: str  # what `Runtime.device` reports, e.g. "xla:tpu:0" or "xla:cpu:0"
    # A call has been given a cache folder, whatever came of it: only the first counts.
    cache_configured: bool = False
    # One lock for the process's XLA device, shared by every XlaRuntime, held while a batch is
    # traced, compiled and executed lazily, and while a compiled program is launched. Why:
    # - `torch_xla.sync()` materialises every pending lazy tensor of the device, not just the
    #   caller's, and a trace clears every pending tensor when it is done: two threads tracing at
    #   once would cut each other's graphs at arbitrary points, giving programs that warmup never
    #   compiled (recompiles while serving) and outputs computed in a foreign graph.
    # - torch_xla's metrics are process-wide; holding the lock makes a counter delta taken around
    #   one trace belong to that trace and model.
    # A replayed batch holds the lock only to launch its program: its inputs are copied to the
    # device before, and its outputs copied back after, so with max_concurrency > 1 one batch's
    # host work (decoding, padding, copies) overlaps another's device work.
    lock: threading.Lock = field(default_factory=threading.Lock)


_lock = threading.Lock()
_configured: XlaProcess | None = None


def _pjrt_device() -> str:
    # The config only allows device = "tpu" with runtime = "tpu"; PJRT_DEVICE=CPU runs XLA:CPU.
    return os.environ.get("PJRT_DEVICE", "TPU").upper()


def configure(cache_base: str | None) -> XlaProcess:
    """Open this process's XLA device; the first call that succeeds opens it, later calls get the
    same process. DeviceUnavailable when it cannot be opened (a later call tries again).

    `cache_base`: xla.compilation_cache_dir (empty or None: no persistent cache), set by the first
    call given one.
    """
    global _configured
    with _lock:
        if _configured is None:
            _configured = _open(_pjrt_device())
        # Configuring the cache reads whether XLA has compiled yet: no model may compile meanwhile.
        with _configured.lock:
            _configure_cache(_configured, cache_base)
        return _configured


def _open(pjrt_device: str) -> XlaProcess:
    """Import torch_xla and open the XLA device of type `pjrt_device`."""
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
    process = XlaProcess(
        torch_xla,
        torch_xla.runtime,
        torch_xla.debug.metrics,
        dynamo_bridge,
        device,
        f"xla:{real.lower()}",
    )
    log.info(
        "xla_device_opened",
        device=process.label,
        pjrt_device=pjrt_device,
        torch_xla=torch_xla.__version__,
    )
    return process


def _configure_cache(process: XlaProcess, base: str | None) -> None:
    """Point the persistent compilation cache at this process's folder; `process.lock` held.

    XLA reads the setting once, before its first compilation, so only the first call counts.
    The folder is one per device type and ordinal (two processes never share one TPU chip) and per
    torch_xla version (executables do not carry across versions), and stable across restarts,
    which is what the cache is for. XLA:CPU writes entries but cannot read them back.
    """
    if process.cache_configured or not base:
        return
    process.cache_configured = True
    if process.torch_xla._XLAC._xla_computation_cache_is_initialized():
        log.warning(
            "xla_compilation_cache_not_configured",
            reason="XLA compiled before the first tpu model",
        )
        return
    folder = Path(base) / (
        f"torch_xla-{process.torch_xla.__version__}-"
        f"{process.xr.device_type().lower()}-{process.xr.global_ordinal()}"
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("xla_compilation_cache_disabled", folder=str(folder), reason=str(error))
        return
    process.xr.initialize_cache(str(folder), readonly=False)
    log.info("xla_compilation_cache", folder=str(folder))
