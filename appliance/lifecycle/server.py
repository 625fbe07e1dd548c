"""Running the appliance: Hypercorn serving the app, with the startup, reload and drain lifecycle.

Start: Hypercorn binds at once (liveness answers), models come up in the background, readiness
turns 200 and systemd hears READY=1 only when every model is warm. SIGHUP reloads.

SIGTERM, all within `shutdown_grace_s`: readiness turns 503 at once while the listeners stay open
for a short unready window (probes and load balancers see 503; what arrives is still served),
then the listeners take no new handshakes and the connections the kernel has queued are accepted
(`listeners`), then Hypercorn closes them and waits for accepted requests, then the models close,
then the process exits, abandoning model threads that are stuck in a hung model. A second
SIGTERM or SIGINT skips the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp

from appliance.config import AppConfig
from appliance.config.schema import access_log_rate
from appliance.grpc import GrpcContext, GrpcServer
from appliance.lifecycle.listeners import empty_before_closing, own_listeners
from appliance.lifecycle.models import ModelLifecycle, StartupFailed
from appliance.lifecycle.notify import SystemdNotifier
from appliance.lifecycle.preflight import preflight
from appliance.lifecycle.process import tune_for_serving
from appliance.lifecycle.steps import THREAD_PREFIX
from appliance.logs import finish_output
from appliance.metrics import Metrics
from appliance.repository import ModelRepository
from appliance.rest import AppContext, HttpSettings, create_app, health
from appliance.rest.access import AccessLogSampler
from appliance.rest.context import RepositoryControl
from appliance.vertex import VertexSettings
from appliance.vertex.predict import PredictEndpoint
from appliance.vertex.settings import predict_model

log = structlog.get_logger("aegis.lifecycle")

# How long a connection may go without the headers of a request: a new one, or a keep-alive one
# after its last reply. Hypercorn holds a connection that the client has closed until this timer
# ends too (its idle task outlives the read loop), so a burst of short connections occupies
# descriptors for this long: 5 s (Hypercorn's and uvicorn's default), not nginx's 75 s.
KEEP_ALIVE_S = 5.0
# Connections the kernel completes and queues while the loop is busy (Hypercorn's default: 100,
# so a burst of new connections saw SYNs dropped and retried a second later).
LISTEN_BACKLOG = 2048
# How long the worker threads get to finish once the event loop has stopped.
THREAD_JOIN_S = 0.5
# The most of the HTTP drain spent taking the connections queued on the listeners.
LISTENER_DRAIN_S = 1.0


def drain_budget(grace_s: float, unready_window_s: float) -> tuple[float, float]:
    """(unready window, HTTP drain) in seconds; the rest of `grace_s` is for closing the models.

    The window lets probes see 503 before connections are refused. Closing the models gets a
    reserve of its own, small because accepted requests are done by then.
    """
    window = min(unready_window_s, grace_s)
    reserve = min(1.0, (grace_s - window) * 0.2)
    return window, max(grace_s - window - reserve, 0.0)


def listener_budget(http_drain_s: float) -> float:
    """The part of the HTTP drain for taking the queued connections before the listeners close."""
    return min(LISTENER_DRAIN_S, http_drain_s / 4)


def server_version() -> str:
    try:
        return version("aegis-appliance")
    except PackageNotFoundError:
        return "0+unknown"


class ModelSet(Protocol):
    """What a serving process brings up, reloads and closes: its own models
    (`ModelLifecycle`), or a front end's links to the engines that serve them."""

    async def start(self) -> None: ...

    async def reload(self) -> object: ...

    async def close(self) -> None: ...


class Appliance:
    """One serving process: the app, its models, and what systemd is told."""

    def __init__(
        self,
        config: AppConfig,
        reread_config: Callable[[], AppConfig] | None = None,
        notifier: SystemdNotifier | None = None,
        metrics: Metrics | None = None,
        control: RepositoryControl | None = None,
        repository: ModelRepository | None = None,
        models: ModelSet | None = None,
    ) -> None:
        """`repository` and `models`: a front end's, filled from the engines; by default the
        models are this process's own."""
        self.config = config
        self.notifier = notifier or SystemdNotifier.from_environment()
        self.metrics = metrics or Metrics()
        self.repository = repository or ModelRepository()
        self.models: ModelSet
        if models is None:
            lifecycle = ModelLifecycle(
                config, self.repository, self.metrics, self.notifier, reread_config
            )
            self.models = lifecycle
            control = control or lifecycle
        else:
            self.models = models
        if control is None:
            raise ValueError("models brought from elsewhere need the control of admin calls")
        self.exit_code = 0
        # A replica restarted beside serving ones warms before it accepts from the shared socket.
        self.warm_before_serving = False
        # Replicas each bind the gRPC port themselves, sharing it (SO_REUSEPORT).
        self.grpc_reuse_port = False
        self._started = False
        self._draining = False
        self._stop = asyncio.Event()
        self._stop_deadline: float | None = None
        self._listeners: list[int] = []  # descriptors of the sockets this process listens on
        self._emptying: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        admin_token = preflight(config)
        settings = HttpSettings(
            max_request_bytes=config.server.max_request_bytes,
            admin_token=admin_token,
            server_version=server_version(),
        )
        sampler = AccessLogSampler(access_log_rate(config.server.access_log))
        context = AppContext(self.repository, self.metrics, settings, self, control, sampler)
        self.plane = context.plane
        self._pacing = context.pacing
        self.app: ASGIApp = create_app(
            context, lifespan=self._lifespan, extra_routes=self._vertex_routes(context)
        )
        self.grpc_context = GrpcContext(
            self.plane,
            self.metrics,
            control,
            admin_token,
            access_log=sampler,
            pacing=context.pacing,
        )

    def _vertex_routes(self, context: AppContext) -> list[Route]:
        """Vertex AI's health and predict routes, when it runs this container
        (`AIP_MODE=PREDICTION`)."""
        vertex = VertexSettings.from_environment()
        if vertex is None:
            return []
        model = predict_model(self.config)
        limit = self.config.server.max_request_bytes
        predict = PredictEndpoint(
            self.plane, model, limit, context.access_log, context.pacing, context.client_watches
        )
        return [
            Route(vertex.health_route, health.ready, methods=["GET"]),
            Route(vertex.predict_route, predict.handle, methods=["POST"]),
        ]

    def is_ready(self) -> bool:
        return self._started and not self._draining and self.repository.ready

    def is_draining(self) -> bool:
        return self._draining

    def not_ready_reason(self) -> str:
        if self._draining:
            return "shutting down"
        pending = ", ".join(f"{name}:{version}" for name, version in self.repository.pending())
        return f"loading {pending}" if pending else "starting"

    def _spawn(self, coroutine: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        """No background task dies silently: an exception that escaped one is logged, and the
        process, which can no longer be trusted to start, serve or be watched, exits non-zero."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("background_task_failed", task=task.get_name(), exc_info=error)
        self.notifier.status(f"{task.get_name()} failed: {type(error).__name__}: {error}")
        self.exit_code = 1
        self._stop.set()

    def _fail_start(self, reason: str) -> None:
        log.error("start_failed", reason=reason)
        self.notifier.status(f"start failed: {reason}")
        self.exit_code = 1
        self._stop.set()

    async def _start_models(self) -> None:
        try:
            await self.models.start()
        except StartupFailed as error:
            self._fail_start(str(error))
            return
        except Exception as error:
            log.error("start_failed", exc_info=error)
            self._fail_start(f"{type(error).__name__}: {error}")
            return
        self._started = True
        count = sum(1 for _ in self.repository)
        self.notifier.ready(f"serving {count} model version(s)")
        log.info("ready", models=count)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        tune_for_serving()
        grpc_stop = await self._start_grpc()
        if not self._started:
            self._spawn(self._start_models(), "start")
        if self.notifier.watchdog_interval() is not None:
            self._spawn(self.notifier.run_watchdog(), "watchdog")
        try:
            yield
        finally:
            self.notifier.stopping()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if grpc_stop is not None:
                # HTTP has drained; gRPC drains within the same budget, and may still be.
                self._stop.set()
                await grpc_stop
            await self._close_models()

    async def _start_grpc(self) -> asyncio.Task[None] | None:
        """Serve gRPC from here on; the task that drains it once the stop comes (as Hypercorn
        drains HTTP). None when gRPC is off, or when its address could not be bound (the
        process then exits non-zero, as for an HTTP address)."""
        server = self.config.server
        if not server.grpc_bind:
            return None
        tls = (server.certfile, server.keyfile) if server.certfile else None
        try:
            grpc_server = GrpcServer(
                self.grpc_context,
                self,
                server.grpc_bind,
                server.grpc_message_limit,
                tls,
                reuse_port=self.grpc_reuse_port,
            )
            await grpc_server.start()
        except OSError as error:
            self._fail_start(str(error))
            return None
        _, drain_s = drain_budget(server.shutdown_grace_s, server.unready_window_s)

        async def drain() -> None:
            await self._stop.wait()
            await grpc_server.stop(drain_s)

        return asyncio.get_running_loop().create_task(drain(), name="grpc")

    async def _close_models(self) -> None:
        """Close the models within what is left of the grace period (all of it, if not stopping)."""
        grace_s = self.config.server.shutdown_grace_s
        left = grace_s
        if self._stop_deadline is not None:
            left = self._stop_deadline - asyncio.get_running_loop().time()
        try:
            # Leave THREAD_JOIN_S of the grace period for the threads after the loop stops.
            await asyncio.wait_for(self.models.close(), timeout=max(left - THREAD_JOIN_S, 0.1))
        except (TimeoutError, asyncio.TimeoutError):
            log.error("models_close_timeout", grace_s=grace_s)

    def request_reload(self) -> None:
        log.info("reload_requested")
        self._spawn(self.models.reload(), "reload")

    def request_stop(self) -> None:
        """Readiness turns 503 at once; after the unready window Hypercorn stops accepting."""
        loop = asyncio.get_running_loop()
        if self._draining:
            # Asked twice: no more waiting for probes or queued connections.
            if self._emptying is not None:
                self._emptying.cancel()
            self._stop.set()
            return
        grace_s = self.config.server.shutdown_grace_s
        window, _ = drain_budget(grace_s, self.config.server.unready_window_s)
        log.info("shutting_down", grace_s=grace_s, unready_window_s=window)
        self.notifier.stopping()
        self._draining = True
        self._pacing.release()  # connections held under overload get their end now
        self._stop_deadline = loop.time() + grace_s
        loop.call_later(window, self._close_listeners)

    def _close_listeners(self) -> None:
        """Take what the kernel has queued on the listeners, then let Hypercorn close them."""
        if self._stop.is_set() or not self._listeners:
            self._stop.set()
            return
        server = self.config.server
        _, http_drain_s = drain_budget(server.shutdown_grace_s, server.unready_window_s)

        async def empty_then_stop() -> None:
            try:
                await empty_before_closing(self._listeners, listener_budget(http_drain_s))
            finally:
                self._stop.set()

        self._emptying = asyncio.get_running_loop().create_task(empty_then_stop())

    async def _warm_first(self) -> bool:
        """Bring the models up before serving; False when that failed or a stop came first."""
        loop = asyncio.get_running_loop()
        start = loop.create_task(self._start_models())
        stop = loop.create_task(self._stop.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        start.cancel()
        await asyncio.gather(start, stop, return_exceptions=True)
        if self._started and not self._stop.is_set():
            return True
        await self._close_models()
        return False

    def hypercorn_config(self, bind: list[str] | None = None) -> HypercornConfig:
        server = self.config.server
        hyper = HypercornConfig()
        hyper.bind = bind or list(server.bind)
        if server.certfile:
            hyper.certfile = server.certfile
            hyper.keyfile = server.keyfile
        _, http_drain_s = drain_budget(server.shutdown_grace_s, server.unready_window_s)
        hyper.graceful_timeout = http_drain_s - listener_budget(http_drain_s)
        # Hypercorn's own bound on the lifespan shutdown; _close_models keeps to a tighter one.
        hyper.shutdown_timeout = server.shutdown_grace_s + 5.0
        hyper.accesslog = None  # the app logs one structured line per request itself
        # Hypercorn's own "-" handler writes plain-text lines beside the JSON ones: hand it the
        # stdlib logger instead, which reaches the JSON handler that logs.py installs on root.
        hyper.errorlog = logging.getLogger("hypercorn.error")
        hyper.keep_alive_timeout = KEEP_ALIVE_S
        hyper.backlog = LISTEN_BACKLOG
        # No read_timeout: Hypercorn would wrap every read in a task and a timer. A client that
        # stalls is let go all the same: before its headers are complete by the keep-alive
        # timer, in its body by the app (appliance.rest.client).
        return hyper

    async def serve(self, bind: list[str] | None = None) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            if self.warm_before_serving and not await self._warm_first():
                return self.exit_code
            hyper = self.hypercorn_config(bind)
            self._listeners = own_listeners(hyper)
            await serve(self.app, hyper, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return self.exit_code


def run(
    config: AppConfig,
    bind: list[str] | None = None,
    reread_config: Callable[[], AppConfig] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code."""
    return run_appliance(lambda: Appliance(config, reread_config), bind)


def run_appliance(make: Callable[[], Appliance], bind: list[str] | None = None) -> int:
    """Serve the appliance `make` builds (inside the event loop) until it stops."""
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run

    async def main() -> int:
        return await make().serve(bind)

    raise_descriptor_limit()
    code = runner(main())
    _abandon_stuck_threads(code)
    return code


def raise_descriptor_limit() -> None:
    """Raise the soft limit on open files to the hard one: every connection is a descriptor.

    systemd gives services a soft limit of 1024 (for select()-based programs) and a high hard
    limit for programs like this one, which use epoll, to raise themselves.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("open files limit", soft=resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard=hard)


def _abandon_stuck_threads(code: int) -> None:
    """Exit now if a model thread or a start step is still running: joining it could take forever.

    The interpreter joins every non-daemon thread at exit, and model batches and the steps of a
    start (`steps`) run native code that cannot be interrupted; the models have had their grace
    period already. An interpreter exit with such a thread inside native code is not safe either
    (a stop during a jax load was seen to abort it: "terminate called without an active
    exception"), so the process ends with os._exit, its log lines passed on first.
    """
    end = time.monotonic() + THREAD_JOIN_S
    stuck = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(end - time.monotonic(), 0.0))
        if thread.is_alive():
            stuck.append(thread.name)
    if stuck:
        starting = [
            name.removeprefix(THREAD_PREFIX) for name in stuck if name.startswith(THREAD_PREFIX)
        ]
        if starting and len(starting) == len(stuck):
            log.info("exiting_during_start", left_running=starting)
        else:
            log.error("exiting_with_model_threads_running", threads=stuck)
        finish_output()
        os._exit(code)
