"""A process the supervisor starts (`python -m appliance.lifecycle.replica`): a replica, an
engine or a front end.

A replica is the single-process appliance with four differences:
- it serves the supervisor's listening sockets (inherited, `fd://N`), so every replica accepts
  from the same queue and a restarting replica loses no connection that is still queued;
- its sd_notify messages go to the supervisor (NOTIFY_SOCKET points there), which alone speaks
  to systemd;
- it is ready only once the supervisor says the whole host is (the same answer from every
  replica), and admin load/unload are forwarded to the supervisor, which rolls them through
  every replica;
- restarted beside serving replicas, it warms its models before it accepts anything.

An engine is a replica that serves no port: it runs its models for the front ends, which connect
to its channel socket (`appliance.channel`). A front end is a replica that runs no model: it
serves the ports from the models its engines publish, and imports neither torch nor jax.

What it is given comes pickled on stdin (`ReplicaSpec`): the config as the supervisor resolved
it, which cannot always be re-created from a file (models declared from Python).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from appliance.channel import Arena, EngineLinks, EngineServer
from appliance.config import (
    AppConfig,
    DeclaredModel,
    ServerConfig,
    load_config,
    with_binds,
    with_extra_models,
)
from appliance.errors import ModelNotReady
from appliance.lifecycle.link import Link, LinkClosed, Message, raise_for_reply
from appliance.lifecycle.models import ModelLifecycle
from appliance.lifecycle.process import exit_process, tune_for_serving
from appliance.lifecycle.replicas import Role
from appliance.lifecycle.server import Appliance, run_appliance
from appliance.logs import capture_native_output, configure_logging
from appliance.metrics import Metrics
from appliance.metrics.replicas import RUNTIME_FILE, ReplicasCollector, write_text
from appliance.repository import ModelRepository

log = structlog.get_logger("aegis.lifecycle")

# How often a replica writes its runtimes' counters beside its metric files.
RUNTIME_METRICS_PERIOD_S = 5.0


@dataclass(frozen=True)
class ReplicaSpec:
    index: int
    threads: int  # torch intra-op threads
    config: AppConfig  # the models this replica starts with, its own XLA cache folder
    config_path: str | None  # re-read on SIGHUP; None: `config` is re-used
    extra_models: tuple[DeclaredModel, ...]  # declared from Python, added on every re-read
    # --bind and --grpc-bind, kept over the file's on every re-read.
    bind: tuple[str, ...] | None
    grpc_bind: tuple[str, ...] | None
    binds: tuple[str, ...]  # fd://N of the inherited listening sockets
    control_fd: int
    metrics_root: str
    warm_before_serving: bool
    log_level: str
    role: Role = "replica"
    # An engine: its channel socket; a front end: every engine's, by engine index.
    channel_paths: tuple[str, ...] = ()
    arena_bytes: int = 0  # a front end's shared-memory arena


def engine_config(config: AppConfig) -> AppConfig:
    """`config` as an engine serves it: no port of its own, and no unready window (it stops
    when told, the front ends having drained already)."""
    fields = {**config.server.model_dump(), "grpc_bind": (), "unready_window_s": 0.0}
    return replace(config, server=ServerConfig(**fields))


def reread_function(spec: ReplicaSpec) -> Callable[[], AppConfig]:
    """How the replica reads its config again on SIGHUP: as the supervisor first gave it, so
    that only what the file changed reads as changed."""
    if spec.config_path is None:
        return lambda: spec.config
    path = spec.config_path

    def reread() -> AppConfig:
        fresh = with_binds(load_config(path), spec.bind, spec.grpc_bind)
        if spec.role == "engine":
            fresh = engine_config(fresh)
        return with_extra_models(fresh, spec.extra_models)

    return reread


class ForwardedControl:
    """The admin endpoints' `RepositoryControl`: the supervisor rolls the change everywhere."""

    def __init__(self) -> None:
        self.link: Link | None = None  # opened with the event loop

    async def _forward(self, op: str, name: str) -> None:
        if self.link is None:
            raise ModelNotReady("this replica is not connected to its supervisor yet")
        try:
            reply = await self.link.call({"op": op, "name": name})
        except LinkClosed:
            raise ModelNotReady("the host is shutting down") from None
        raise_for_reply(reply)

    async def load(self, name: str) -> None:
        await self._forward("load", name)

    async def unload(self, name: str) -> None:
        await self._forward("unload", name)


class ReplicaAppliance(Appliance):
    def __init__(self, spec: ReplicaSpec) -> None:
        root = Path(spec.metrics_root)
        exposition = CollectorRegistry(auto_describe=False)
        exposition.register(ReplicasCollector(root))
        metrics = Metrics(exposition=exposition)
        repository = ModelRepository()
        engines = None
        if spec.role == "frontend":
            arena = Arena(spec.arena_bytes, f"aegis-frontend-{spec.index}")
            engines = EngineLinks(spec.channel_paths, repository, metrics, arena, spec.index)
        super().__init__(
            spec.config,
            reread_function(spec),
            metrics=metrics,
            control=(forwarded := ForwardedControl()),
            repository=repository,
            models=engines,
        )
        self.spec = spec
        self._forwarded = forwarded
        self.warm_before_serving = spec.warm_before_serving
        self.grpc_reuse_port = True
        self.host_ready = False
        self._metrics_folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", root))

    def is_ready(self) -> bool:
        return self.host_ready and super().is_ready()

    def not_ready_reason(self) -> str:
        if super().is_ready():
            return "waiting for the other replicas"
        return super().not_ready_reason()

    async def _command(self, message: Message) -> Message | None:
        """What the supervisor asks of this replica."""
        op = message.get("op")
        if op == "host_ready":
            self.host_ready = True
        elif op in ("load", "unload") and isinstance(self.models, ModelLifecycle):
            change = self.models.load if op == "load" else self.models.unload
            await change(str(message["name"]))
        else:
            log.warning("control_link_unknown_op", op=op)
        return None

    async def _follow_link(self, link: Link) -> None:
        await link.run(self._command)
        # The supervisor is gone (killed, or it closed the link): nobody can restart or report
        # this replica any more, so it stops like on SIGTERM.
        if not self._draining:
            log.error("supervisor_gone")
            self.request_stop()

    async def _write_runtime_metrics(self) -> None:
        path = self._metrics_folder / RUNTIME_FILE
        while self.spec.role != "frontend":
            await asyncio.sleep(RUNTIME_METRICS_PERIOD_S)
            if any(True for model in self.repository if model.device.startswith("xla")):
                with contextlib.suppress(OSError):
                    write_text(path, self.metrics.runtime_collectors)

    async def serve(self, bind: list[str] | None = None) -> int:
        loop = asyncio.get_running_loop()
        link = await Link.open(socket.socket(fileno=self.spec.control_fd))
        self._forwarded.link = link
        follow = loop.create_task(self._follow_link(link))
        runtime = loop.create_task(self._write_runtime_metrics())
        try:
            return await self._serve(bind)
        finally:
            runtime.cancel()
            follow.cancel()
            await asyncio.gather(follow, runtime, return_exceptions=True)
            link.close()

    async def _serve(self, bind: list[str] | None) -> int:
        return await super().serve(bind)


class EngineAppliance(ReplicaAppliance):
    """An engine: the models of a replica, served to the front ends over the channel."""

    async def _serve(self, bind: list[str] | None) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        server = EngineServer(self.repository, self.spec.channel_paths[0])
        try:
            tune_for_serving()
            await server.start()
            self._spawn(self._start_models(), "start")
            if self.notifier.watchdog_interval() is not None:
                self._spawn(self.notifier.run_watchdog(), "watchdog")
            await self._stop.wait()
            self.notifier.stopping()
            # The front ends stop first: what they sent is answered before they close.
            left = self.config.server.shutdown_grace_s
            if self._stop_deadline is not None:
                left = self._stop_deadline - loop.time()
            await server.drain(max(left / 2, 0.0))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.close()
            await self._close_models()
        return self.exit_code


def _set_threads(threads: int) -> None:
    """torch's intra-op pool, once, before any model loads (the lifecycle's, not a runtime's)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def main() -> int:
    spec: ReplicaSpec = pickle.load(sys.stdin.buffer)
    configure_logging(spec.log_level, capture_native_output())
    label = "frontend" if spec.role == "frontend" else "replica"
    structlog.contextvars.bind_contextvars(**{label: spec.index})
    if spec.role != "frontend":
        _set_threads(spec.threads)
    kind = EngineAppliance if spec.role == "engine" else ReplicaAppliance
    try:
        code = run_appliance(lambda: kind(spec), list(spec.binds))
    except (OSError, ValueError) as error:  # as `aegis serve` says it: a key file, a token
        print(f"aegis: {label} {spec.index}: {error}", file=sys.stderr)
        return 1
    exit_process(code)


if __name__ == "__main__":
    sys.exit(main())
