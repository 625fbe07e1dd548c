"""The process-wide JAX setup: which platforms JAX opens, which device this process serves on,
where compiled programs are cached, and how compilations are attributed to the runtime that
caused them. Everything JAX holds for the whole process is set here, once, by the lifecycle
(`configure`, before the first model loads); the `jax` runtime only asks for its device.

- Platforms: JAX opens every platform it is given at its first use, and opening the TPU claims
  the chips libtpu can see. So the list comes from the configuration: "tpu,cpu" when a `jax` model
  runs on the TPU and the host has TPU chips on its PCI bus, else "cpu" (a host serving only CPU
  models never touches a chip). The PCI bus is looked at first because libtpu on a host without
  chips retries the GCE metadata server for minutes before it gives up.
- Devices: on a TPU host libtpu exposes only the chips in TPU_VISIBLE_CHIPS (the replicas
  supervisor sets it, one chip per process); without it, every chip of the host. The process serves
  on one device of the platform: the one `AEGIS_JAX_DEVICE` names by its index among the devices
  JAX sees there (default 0). On the CPU, `--xla_force_host_platform_device_count=N` in XLA_FLAGS
  gives N devices, which is how the tests check that a process uses the one it was given.
- Cache: JAX's persistent compilation cache in `<xla.compilation_cache_dir>/jax-<version>`:
  executables do not carry across JAX versions, and a restart finds what the last run compiled.
  Every program is cached, however quick its compilation.
- Compilations: JAX reports every program it builds (compiled, or read from the persistent cache)
  through `jax.monitoring`, in the thread that asked for it. A runtime collects what happens in its
  own thread while it runs a batch (`collecting`), so concurrent models never see each other's.

jax is imported only inside these functions: a host without it imports this module unchanged.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from appliance.chips import tpu_chips
from appliance.runtimes.base import DeviceUnavailable

log = structlog.get_logger("aegis.runtimes")

DEVICE_INDEX_VARIABLE = "AEGIS_JAX_DEVICE"

# What jax.monitoring calls a program built for a call (compiled, or read from the persistent
# cache), the tracing and lowering that precede it, and a persistent-cache hit.
_PROGRAM_BUILT = "/jax/core/compile/backend_compile_duration"
_BEFORE_BUILD = frozenset(
    ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
)
_PERSISTENT_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclass
class Compilations:
    """What JAX built while one batch ran: seconds per program (tracing and lowering included),
    and how many came from the persistent cache."""

    seconds: list[float] = field(default_factory=list)
    cache_hits: int = 0
    pending: float = 0.0  # tracing and lowering of the program being built


@dataclass(frozen=True)
class JaxProcess:
    """The configured JAX of this process."""

    jax: ModuleType
    platforms: tuple[str, ...]
    cache_folder: Path | None
    unavailable: dict[str, str]  # platform -> why it was left out

    def device(self, platform: str) -> Any:
        """This process's device on `platform` ("cpu" or "tpu"); DeviceUnavailable if none."""
        if platform not in self.platforms:
            reason = self.unavailable.get(
                platform, f"JAX was started with platforms {','.join(self.platforms)}"
            )
            raise DeviceUnavailable(f"no JAX {platform} device: {reason}")
        try:
            devices = self.jax.devices(platform)
        except RuntimeError as error:  # the PJRT client could not be created: busy chip, topology
            raise DeviceUnavailable(f"JAX cannot open its {platform} devices: {error}") from None
        index = _device_index()
        if index >= len(devices):
            raise DeviceUnavailable(
                f"{DEVICE_INDEX_VARIABLE}={index}, but JAX sees {len(devices)} {platform} device(s)"
            )
        return devices[index]


_lock = threading.Lock()
_configured: JaxProcess | None = None
_collecting = threading.local()


def _device_index() -> int:
    raw = os.environ.get(DEVICE_INDEX_VARIABLE, "0")
    if not raw.isdigit():
        raise DeviceUnavailable(f"{DEVICE_INDEX_VARIABLE} must be a device index >= 0, got {raw!r}")
    return int(raw)


def _tpu_unavailable() -> str | None:
    """Why the TPU platform cannot be opened here, or None when it can be tried."""
    if not tpu_chips():
        return "this host has no TPU chip on its PCI bus"
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return "libtpu is not installed (the aegis_tpu_runtime role's jax flavor installs it)"
    return None


def _import_jax() -> ModuleType:
    try:
        import jax
        import jax.export
        import jax.monitoring
    except Exception as error:  # ImportError, or a jaxlib that does not match jax
        raise DeviceUnavailable(
            f"jax cannot be imported ({type(error).__name__}: {error}); install "
            "the aegis_tpu_runtime role's jax flavor (requirements-jax.txt)"
        ) from None
    module: ModuleType = jax
    return module


def configure(wants_tpu: bool, cache_base: str | None) -> JaxProcess:
    """Set JAX up for this process; the first call decides, later calls get the same setup.

    `wants_tpu`: a configured `jax` model runs on the TPU. `cache_base`: xla.compilation_cache_dir
    (empty or None: no persistent cache).
    """
    global _configured
    with _lock:
        if _configured is not None:
            if wants_tpu and "tpu" not in _configured.platforms:
                log.warning(
                    "jax_platforms_fixed",
                    platforms=",".join(_configured.platforms),
                    cause="set at start: a TPU model added since needs a restart",
                )
            return _configured
        jax = _import_jax()
        unavailable: dict[str, str] = {}
        platforms: tuple[str, ...] = ("cpu",)
        if wants_tpu:
            reason = _tpu_unavailable()
            if reason is None:
                platforms = ("tpu", "cpu")
            else:
                unavailable["tpu"] = reason
        jax.config.update("jax_platforms", ",".join(platforms))
        # The batch's thread waits for every result at once: running CPU programs inline in it
        # saves a hand-off to JAX's dispatch thread per batch, which on a busy core costs more
        # than the program.
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        cache_folder = _configure_cache(jax, cache_base)
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _configured = JaxProcess(jax, platforms, cache_folder, unavailable)
        log.info(
            "jax_configured",
            jax=jax.__version__,
            platforms=",".join(platforms),
            unavailable=unavailable or None,
            cache=str(cache_folder) if cache_folder else None,
            tpu_visible_chips=os.environ.get("TPU_VISIBLE_CHIPS"),
            device_index=os.environ.get(DEVICE_INDEX_VARIABLE, "0"),
        )
        return _configured


def configure_for(models: Iterable[tuple[str, str]], cache_base: str | None) -> None:
    """`configure` for the (runtime, device) pairs of the configured models, if any is `jax`."""
    jax_devices = {device for runtime, device in models if runtime == "jax"}
    if jax_devices:
        try:
            configure("tpu" in jax_devices, cache_base)
        except DeviceUnavailable as error:
            # Without jax, each jax model fails its load with this reason, by its fallback policy.
            log.warning("jax_not_configured", reason=str(error))


def configured() -> JaxProcess:
    """The setup `configure` made; configures a CPU-only JAX when nothing did (Python use)."""
    if _configured is not None:
        return _configured
    return configure(wants_tpu=False, cache_base=None)


def _configure_cache(jax: ModuleType, base: str | None) -> Path | None:
    if not base:
        return None
    folder = Path(base) / f"jax-{jax.__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("jax_compilation_cache_disabled", folder=str(folder), reason=str(error))
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # JAX skips programs that compile in under a second by default; a restart should find them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _on_event(event: str, **_: object) -> None:
    sink: Compilations | None = getattr(_collecting, "sink", None)
    if sink is not None and event == _PERSISTENT_CACHE_HIT:
        sink.cache_hits += 1


def _on_duration(event: str, duration: float, **_: object) -> None:
    sink: Compilations | None = getattr(_collecting, "sink", None)
    if sink is None:
        return
    if event in _BEFORE_BUILD:
        sink.pending += duration
    elif event == _PROGRAM_BUILT:
        sink.seconds.append(sink.pending + duration)
        sink.pending = 0.0


@contextmanager
def collecting() -> Iterator[Compilations]:
    """What JAX builds in this thread inside the block."""
    sink = Compilations()
    previous = getattr(_collecting, "sink", None)
    _collecting.sink = sink
    try:
        yield sink
    finally:
        _collecting.sink = previous
