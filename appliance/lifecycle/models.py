"""Bringing model versions up (sync -> load -> warm -> serve), swapping and removing them.

Blocking steps (downloads, loading, XLA compilation) run on threads of their own (`steps`) so the
event loop keeps answering health checks and, during a reload, inference on the old versions, and
so that a stop never waits for one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from appliance.config import AppConfig, DeclaredModel, XlaConfig
from appliance.config.runtime_table import runtime_row
from appliance.errors import InferenceError, LoadFailed, ModelNotFound
from appliance.lifecycle.notify import SystemdNotifier
from appliance.lifecycle.process import freeze_heap
from appliance.lifecycle.steps import run_step
from appliance.metrics import Metrics, ModelMetrics, RuntimeSample
from appliance.repository import (
    LoadedRuntimes,
    LocalModel,
    ModelRepository,
    ServedModel,
    load_runtimes,
    make_replica,
    warm_up,
    warmup_shapes,
)
from appliance.runtimes import Runtime, RuntimeFailure, jax_process
from appliance.storage import ArtifactStore, SyncError

log = structlog.get_logger("aegis.lifecycle")


class StartupFailed(Exception):
    """A model could not be brought up at start: the process must exit non-zero."""


# What bringing a model up is expected to fail with; their messages say what and why already.
_EXPECTED_FAILURES = (SyncError, RuntimeFailure, OSError)


def describe_failure(error: Exception) -> str:
    """One line for a failed sync, load or warmup. An unexpected kind of exception (a model whose
    outputs do not map onto its signature raises KeyError, say) is named, as its message alone
    ("'y'") would not say what happened."""
    if isinstance(error, _EXPECTED_FAILURES):
        return str(error)
    return f"{type(error).__name__}: {error}"


def fingerprint(path: Path) -> str:
    """Identifies an artifact's content cheaply (names, sizes, modification times)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()
        )
    return digest.hexdigest()


def _load(model: DeclaredModel, location: Path, xla: XlaConfig) -> LoadedRuntimes:
    """Load `model`'s runtimes, then take what loading left on the heap out of the cyclic GC."""
    loaded = load_runtimes(model, location, xla)
    freeze_heap()
    return loaded


@dataclass(frozen=True)
class _Outcome:
    name: str
    version: str
    error: str | None


class ModelLifecycle:
    """Owns the repository's contents; implements the HTTP layer's `RepositoryControl`."""

    def __init__(
        self,
        config: AppConfig,
        repository: ModelRepository,
        metrics: Metrics,
        notifier: SystemdNotifier,
        reread_config: Callable[[], AppConfig] | None = None,
    ) -> None:
        self._config = config
        self._repository = repository
        self._metrics = metrics
        self._notifier = notifier
        self._reread_config = reread_config
        self._store = ArtifactStore(config.storage, metrics)
        self._declared = {(m.name, m.version): m for m in config.models}
        # One change at a time: a SIGHUP during an admin load waits for it.
        self._changing = asyncio.Lock()
        metrics.watch_runtimes(self._runtime_samples)

    def _runtime_samples(self) -> Iterable[RuntimeSample]:
        for model in list(self._repository):
            if not isinstance(model, LocalModel):
                continue
            for replica in model.replicas():
                runtime = replica.runtime
                # Runtimes that compile per shape report it (aegis_xla_* metrics).
                if not runtime_row(runtime.name).compiles_per_shape:
                    continue
                yield RuntimeSample(model.name, model.version, runtime.device, runtime.stats())

    async def start(self) -> None:
        """Bring every declared model up; raises StartupFailed on the first that cannot be."""
        for model in self._declared.values():
            self._repository.expect(model.name, model.version)
        async with self._changing:
            await run_step(self._configure_processes)
            for model in self._declared.values():
                try:
                    served = await self._bring_up(model)
                except Exception as error:
                    if not isinstance(error, _EXPECTED_FAILURES):
                        log.error("start_failed", model=model.name, exc_info=error)
                    raise StartupFailed(
                        f"model {model.name!r} version {model.version!r}: {describe_failure(error)}"
                    ) from None
                # Nothing is serving yet, so there is no unchanged copy to keep.
                assert served is not None
                self._repository.put(served)

    def _configure_processes(self) -> None:
        """Set up what a runtime holds for the whole process (JAX's platforms and cache), from
        every declared model at once, before the first loads."""
        jax_process.configure_for(
            ((m.config.runtime, m.config.device) for m in self._declared.values()),
            self._config.xla.compilation_cache_dir,
        )

    async def _bring_up(
        self, model: DeclaredModel, unchanged: str | None = None
    ) -> LocalModel | None:
        """Sync, load and warm `model`; None when its artifact's fingerprint equals `unchanged`."""
        label = f"{model.name}:{model.version}"
        self._notifier.status(f"syncing {label}")
        log.info("model_syncing", model=model.name, version=model.version)
        synced = await run_step(
            self._store.sync, model.name, model.version, model.config.model_path
        )
        artifact_print = await run_step(fingerprint, synced.path)
        if artifact_print == unchanged:
            return None
        self._notifier.status(f"loading {label}")
        log.info(
            "model_loading", model=model.name, version=model.version, artifact=synced.path.name
        )
        loaded = await run_step(_load, model, synced.path, self._config.xla)
        config = model.config
        runtimes = [r for r in (loaded.primary, loaded.overflow) if r is not None]
        shapes = len(list(warmup_shapes(config.batch_buckets, config.dims)))
        self._notifier.status(f"warming {label} ({shapes} shapes)")
        log.info("model_warming", model=model.name, version=model.version, shapes=shapes)
        try:
            warm_times = [
                await run_step(
                    warm_up, runtime, config.batch_buckets, config.dims, config.warmup_iters
                )
                for runtime in runtimes
            ]
        except asyncio.CancelledError:
            # The process is stopping while a warmup step runs on: closing the runtime under it
            # would fail that step; the exit frees the device memory.
            raise
        except BaseException:
            # A version that does not come up must not keep its device memory.
            await _close_runtimes(runtimes)
            raise
        metrics = ModelMetrics(self._metrics, model.name, model.version)
        primary = make_replica(model.name, loaded.primary, config, metrics, warm_times[0])
        overflow = (
            make_replica(model.name, loaded.overflow, config, metrics, warm_times[1])
            if loaded.overflow
            else None
        )
        served = LocalModel(
            model.name,
            model.version,
            config,
            primary,
            metrics,
            overflow,
            artifact_print,
            loaded.labels,
            stand_in=loaded.fallback_reason is not None,
        )
        metrics.set_ready(served.device, True)
        log.info(
            "model_ready",
            model=model.name,
            version=model.version,
            device=served.device,
            fallback=loaded.fallback_reason,
            stale_artifact=synced.stale,
        )
        return served

    async def _swap_in(self, model: DeclaredModel) -> _Outcome:
        """Bring up a new copy beside the serving one and switch; the old one drains."""
        try:
            current: ServedModel | None = self._repository.get(model.name, model.version)
        except InferenceError:
            current = None
        unchanged = (
            current.fingerprint if current is not None and current.config == model.config else None
        )
        self._repository.expect(model.name, model.version)
        try:
            served = await self._bring_up(model, unchanged)
        except Exception as error:
            reason = describe_failure(error)
            log.error(
                "model_reload_failed",
                kept="the serving version",
                model=model.name,
                version=model.version,
                reason=reason,
                exc_info=None if isinstance(error, _EXPECTED_FAILURES) else error,
            )
            if current is None:
                # Nothing serves it: readiness must not wait for a version that failed.
                self._repository.forget(model.name, model.version)
            return _Outcome(model.name, model.version, reason)
        if served is not None:
            previous = self._repository.put(served)
            if previous is not None:
                await previous.retire(self._config.server.shutdown_grace_s)
            log.info("model_swapped_in", model=model.name, version=model.version)
        return _Outcome(model.name, model.version, None)

    async def _retire(self, name: str, version: str) -> None:
        model = self._repository.remove(name, version)
        if model is not None:
            await model.retire(self._config.server.shutdown_grace_s)
            log.info("model_unloaded", model=name, version=version)

    async def reload(self) -> list[_Outcome]:
        """SIGHUP: re-read the model list, re-sync, swap changed versions, remove dropped ones.

        Whatever fails, the serving versions stay and systemd hears READY=1 again.
        """
        async with self._changing:
            self._notifier.reloading()
            try:
                return await self._reload()
            except Exception as error:
                log.error("reload_failed", kept="the serving versions", exc_info=error)
                self._notifier.ready(f"serving; last reload failed: {describe_failure(error)}")
                return []

    async def _reload(self) -> list[_Outcome]:
        if self._reread_config is not None:
            try:
                fresh = self._reread_config()
            except Exception as error:
                log.error("config_reload_failed", kept="the current config", reason=str(error))
                self._notifier.ready("serving; last reload failed: config invalid")
                return []
            if fresh.server != self._config.server or fresh.storage != self._config.storage:
                log.warning(
                    "config_reload_partial", unchanged="[server] and [storage] until restart"
                )
            self._declared = {(m.name, m.version): m for m in fresh.models}
            await run_step(self._configure_processes)
        for model in list(self._repository):
            if (model.name, model.version) not in self._declared:
                await self._retire(model.name, model.version)
        outcomes = [await self._swap_in(model) for model in self._declared.values()]
        failed = [o for o in outcomes if o.error]
        status = f"serving; reload failed for {len(failed)} model(s)" if failed else "serving"
        self._notifier.ready(status)
        return outcomes

    async def load(self, name: str) -> None:
        """Admin `load`: re-sync every declared version of `name` and swap changed ones in."""
        async with self._changing:
            models = [m for m in self._declared.values() if m.name == name]
            if not models:
                raise ModelNotFound(f"model {name!r} is not in the configuration")
            for model in models:
                outcome = await self._swap_in(model)
                if outcome.error:
                    serving = model.version in self._repository.versions(name)
                    left = (
                        "the serving version stays"
                        if serving
                        else f"version {model.version!r} is not serving"
                    )
                    raise LoadFailed(f"load of {name!r} failed, {left}: {outcome.error}")

    async def unload(self, name: str) -> None:
        async with self._changing:
            versions = self._repository.versions(name)
            if not versions:
                raise ModelNotFound(f"unknown model {name!r}")
            for version in versions:
                await self._retire(name, version)

    async def close(self) -> None:
        for model in list(self._repository):
            await self._retire(model.name, model.version)


async def _close_runtimes(runtimes: list[Runtime]) -> None:
    for runtime in runtimes:
        try:
            await asyncio.to_thread(runtime.close)
        except Exception as error:
            log.error("runtime_close_failed", exc_info=error)
