"""Running the appliance: Hypercorn serving the app, with the startup, reload and drain lifecycle.

Start: Hypercorn binds at once (liveness answers), models come up in the background, readiness
turns 200 and systemd hears READY=1 only when every model is warm. SIGHUP reloads. SIGTERM
turns readiness to 503, stops accepting, lets accepted requests finish within
`shutdown_grace_s`, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version

import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette

from appliance.config import AppConfig
from appliance.lifecycle.models import ModelLifecycle, StartupFailed
from appliance.lifecycle.notify import SystemdNotifier
from appliance.metrics import Metrics
from appliance.repository import ModelRepository
from appliance.rest import AppContext, HttpSettings, create_app

log = structlog.get_logger("aegis.server")


def server_version() -> str:
    try:
        return version("aegis-appliance")
    except PackageNotFoundError:
        return "0+unknown"


def read_admin_token(path: str) -> str | None:
    """The bearer token, refusing a file that other users could read."""
    if not path:
        return None
    info = os.stat(path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"server.admin_token_file {path} is readable by group or others: chmod 600 it"
        )
    with open(path, encoding="utf-8") as stream:
        token = stream.read().strip()
    if len(token) < 16:
        raise ValueError(
            f"server.admin_token_file {path}: the token must be at least 16 characters"
        )
    return token


class Appliance:
    """One serving process: the app, its models, and what systemd is told."""

    def __init__(
        self,
        config: AppConfig,
        reread_config: Callable[[], AppConfig] | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or SystemdNotifier.from_environment()
        self.metrics = Metrics()
        self.repository = ModelRepository()
        self.models = ModelLifecycle(
            config, self.repository, self.metrics, self.notifier, reread_config
        )
        self.exit_code = 0
        self._started = False
        self._draining = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        settings = HttpSettings(
            max_request_bytes=config.server.max_request_bytes,
            admin_token=read_admin_token(config.server.admin_token_file),
            server_version=server_version(),
        )
        context = AppContext(self.repository, self.metrics, settings, self, self.models)
        self.app: Starlette = create_app(context, lifespan=self._lifespan)

    def is_ready(self) -> bool:
        return self._started and not self._draining and self.repository.ready

    def not_ready_reason(self) -> str:
        if self._draining:
            return "shutting down"
        pending = ", ".join(f"{name}:{version}" for name, version in self.repository.pending())
        return f"loading {pending}" if pending else "starting"

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_models(self) -> None:
        try:
            await self.models.start()
        except StartupFailed as error:
            log.error("start failed", reason=str(error))
            self.notifier.status(f"start failed: {error}")
            self.exit_code = 1
            self._stop.set()
            return
        self._started = True
        count = sum(1 for _ in self.repository)
        self.notifier.ready(f"serving {count} model version(s)")
        log.info("ready", models=count)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._spawn(self._start_models())
        if self.notifier.watchdog_interval() is not None:
            self._spawn(self.notifier.run_watchdog())
        try:
            yield
        finally:
            self.notifier.stopping()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.models.close()

    def request_reload(self) -> None:
        log.info("reload requested")
        self._spawn(self.models.reload())

    def request_stop(self) -> None:
        """Readiness turns 503 at once; Hypercorn then stops accepting and drains."""
        if not self._draining:
            log.info("shutting down", grace_s=self.config.server.shutdown_grace_s)
            self.notifier.stopping()
        self._draining = True
        self._stop.set()

    def hypercorn_config(self, bind: list[str] | None = None) -> HypercornConfig:
        server = self.config.server
        hyper = HypercornConfig()
        hyper.bind = bind or list(server.bind)
        if server.certfile:
            hyper.certfile = server.certfile
            hyper.keyfile = server.keyfile
        hyper.graceful_timeout = server.shutdown_grace_s
        hyper.accesslog = None  # the app logs one structured line per request itself
        hyper.errorlog = "-"
        hyper.keep_alive_timeout = 75
        return hyper

    async def serve(self, bind: list[str] | None = None) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await serve(self.app, self.hypercorn_config(bind), shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
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
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run

    async def main() -> int:
        appliance = Appliance(config, reread_config)
        return await appliance.serve(bind)

    return runner(main())
