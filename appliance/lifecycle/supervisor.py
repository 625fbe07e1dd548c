"""`aegis serve` with several processes: one supervisor, one serving process per replica, and,
with `[server] frontends`, front-end processes beside the replicas (which are then engines).

The supervisor binds the configured sockets once and every replica serves them (inherited fds):
the kernel keeps one accept queue per socket, so a connection waits there while a replica
restarts instead of being refused, and whichever replica is free accepts next. (SO_REUSEPORT
would give each replica its own queue, and the connections queued on a dying replica's are reset:
bench/reuseport_loss.py measures it.)

Only the supervisor speaks to systemd. Each replica's sd_notify messages come to a socket of the
supervisor's own (NOTIFY_SOCKET points there), checked against the replica's pid:
- start: READY=1 goes to systemd once every replica is warm; then every replica is told that the
  host is ready, and readiness answers 200 from all of them;
- a replica that exits or is killed is started again (at once if it had been serving a while,
  with a doubling backoff if it keeps failing) and warms before it accepts; after
  FAILING_AFTER failed starts in a row it is reported (STATUS=, log, `aegis_replica_failing`)
  and retried at the longest backoff, while the others serve;
- SIGHUP reloads the replicas one at a time (each one's own hot reload), so at most one is busy
  swapping while the others serve;
- SIGTERM/SIGINT is passed to every replica, which drain as a single process does; whatever is
  left after shutdown_grace_s plus EXIT_MARGIN_S is killed.
An admin load/unload arrives at one replica, which forwards it here: it is rolled through every
replica, and a replica started later leaves out the models unloaded since.

With front ends, the front ends serve the sockets and the engines serve no port: READY=1 waits
for both kinds; SIGHUP and admin changes roll through the engines only (the front ends serve
what the engines publish); SIGTERM goes to the front ends first and to the engines once those
have drained. A front end is restarted like a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from hypercorn.config import Config as HypercornConfig

from appliance.chips import tpu_chips
from appliance.config import (
    AppConfig,
    DeclaredModel,
    XlaConfig,
    load_config,
    with_binds,
    with_extra_models,
)
from appliance.lifecycle.child import FAILING_AFTER, STABLE_AFTER_S, Child, backoff_s
from appliance.lifecycle.child_metrics import ChildrenCollector
from appliance.lifecycle.link import Link, LinkClosed, Message
from appliance.lifecycle.notify import SystemdNotifier
from appliance.lifecycle.notify_socket import notify_socket, read_messages
from appliance.lifecycle.replica import ReplicaSpec, engine_config
from appliance.lifecycle.replicas import (
    ReplicaPlan,
    frontend_count,
    operator_threads,
    plan_frontends,
    plan_replicas,
    usable_cpus,
)
from appliance.logs import output_descriptor
from appliance.metrics.replicas import SUPERVISOR_FILE, forget_process, replica_folder, write_text

log = structlog.get_logger("aegis.lifecycle")

# Beyond shutdown_grace_s, for a replica to exit once it has drained.
EXIT_MARGIN_S = 5.0
# A front end's arena: the largest request, within these bounds (a larger request travels inside
# its control message; the arena's pages are the front end's memory once used).
ARENA_MIN_BYTES = 1024 * 1024
ARENA_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ConfigSource:
    """The configuration as served, and how to read it again on SIGHUP."""

    config: AppConfig  # models declared from Python included
    path: str | None  # None: served from a config object, `config` is re-used
    extra_models: tuple[DeclaredModel, ...]
    # --bind and --grpc-bind, kept over the file's on re-reads.
    bind: tuple[str, ...] | None = None
    grpc_bind: tuple[str, ...] | None = None

    def reread(self) -> AppConfig:
        if self.path is None:
            return self.config
        fresh = with_binds(load_config(self.path), self.bind, self.grpc_bind)
        return with_extra_models(fresh, self.extra_models)


def listening_sockets(config: AppConfig, binds: list[str]) -> list[socket.socket]:
    """Bind and listen once, as Hypercorn would; the replicas serve these sockets."""
    hyper = HypercornConfig()
    hyper.bind = binds
    if config.server.certfile:
        hyper.certfile = config.server.certfile
        hyper.keyfile = config.server.keyfile
    sockets = hyper.create_sockets()
    listening = sockets.secure_sockets + sockets.insecure_sockets
    for sock in listening:
        sock.listen(hyper.backlog)
    return listening


class Supervisor:
    def __init__(
        self,
        source: ConfigSource,
        plans: list[ReplicaPlan],
        binds: list[str],
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.source = source
        self.plans = plans
        self.binds = binds
        self.notifier = notifier or SystemdNotifier.from_environment()
        self.grace_s = source.config.server.shutdown_grace_s
        self.exit_code = 0
        self.replicas: list[Child] = []
        self.host_ready = False
        self._models = source.config.models
        self._unloaded: set[str] = set()
        self._sockets: list[socket.socket] = []
        self._notify_sockets: list[socket.socket] = []
        self._rundir = Path()
        self._stop = asyncio.Event()
        self._stopping = False
        self._roll = asyncio.Lock()  # one reload or admin change rolls at a time
        self._reload_pending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        base = os.environ.get("RUNTIME_DIRECTORY") or None
        with tempfile.TemporaryDirectory(prefix="aegis-", dir=base) as rundir:
            self._rundir = Path(rundir)
            try:
                self._sockets = listening_sockets(self.source.config, self.binds)
                for plan in self.plans:
                    self.replicas.append(self._prepare(plan))
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, self._request_stop)
                loop.add_signal_handler(signal.SIGHUP, self._request_reload)
                if self.notifier.watchdog_interval() is not None:
                    self._spawn_task(self.notifier.run_watchdog())
                    self._spawn_task(self._watch_replicas())
                log.info("replicas_starting", replicas=len(self.plans), binds=self.binds)
                self.notifier.status(f"starting {len(self.plans)} replicas")
                for replica in self.replicas:
                    await self._start(replica, warm_first=False)
                await self._stop.wait()
                await self._stop_replicas()
            finally:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(signum)
                await self._kill_leftovers()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                for sock in self._notify_sockets:
                    loop.remove_reader(sock.fileno())
                for sock in self._sockets + self._notify_sockets:
                    sock.close()
        return self.exit_code

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _prepare(self, plan: ReplicaPlan) -> Child:
        label = "frontend" if plan.role == "frontend" else "replica"
        folder = replica_folder(self._rundir / "metrics", plan.index, label)
        folder.mkdir(parents=True)
        notify_path = self._rundir / f"{plan.name}.notify"
        sock = notify_socket(notify_path)
        self._notify_sockets.append(sock)
        replica = Child(plan, notify_path, folder)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notify, replica, sock)
        return replica

    def _replica_spec(self, replica: Child, control_fd: int, warm_first: bool) -> ReplicaSpec:
        config = self.source.config
        models = tuple(m for m in self._models if m.name not in self._unloaded)
        cache = replica.plan.xla_cache_dir(config.xla.compilation_cache_dir)
        config = replace(config, models=models, xla=XlaConfig(compilation_cache_dir=cache))
        role = replica.plan.role
        binds = tuple(f"fd://{sock.fileno()}" for sock in self._sockets)
        grpc_bind = self.source.grpc_bind
        channels: tuple[str, ...] = ()
        if role == "engine":
            config = engine_config(config)
            binds, grpc_bind = (), ()
            channels = (self._channel_path(replica.index),)
        elif role == "frontend":
            engines = [r for r in self.replicas if r.runs_models]
            channels = tuple(self._channel_path(engine.index) for engine in engines)
        return ReplicaSpec(
            index=replica.index,
            threads=replica.plan.threads,
            config=config,
            config_path=self.source.path,
            extra_models=self.source.extra_models,
            bind=self.source.bind,
            grpc_bind=grpc_bind,
            binds=binds,
            control_fd=control_fd,
            metrics_root=str(self._rundir / "metrics"),
            warm_before_serving=warm_first,
            log_level=self._log_level,
            role=role,
            channel_paths=channels,
            arena_bytes=min(max(config.server.max_request_bytes, ARENA_MIN_BYTES), ARENA_MAX_BYTES),
        )

    def _channel_path(self, engine: int) -> str:
        return str(self._rundir / f"engine-{engine}.sock")

    def _listening(self, replica: Child) -> list[socket.socket]:
        return [] if replica.plan.role == "engine" else self._sockets

    def _replica_environment(self, replica: Child) -> dict[str, str]:
        environment = {**os.environ, **replica.plan.environment}
        environment["NOTIFY_SOCKET"] = str(replica.notify_path)
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(replica.metrics_folder)
        # systemd's watchdog is the supervisor's; the replicas get the same period from it.
        environment.pop("WATCHDOG_PID", None)
        environment.pop("WATCHDOG_USEC", None)
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            environment["WATCHDOG_USEC"] = str(int(interval * 2 * 1_000_000))
        return environment

    async def _start(self, replica: Child, warm_first: bool) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            spec = self._replica_spec(replica, theirs.fileno(), warm_first)
            output = output_descriptor()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "appliance.lifecycle.replica",
                stdin=asyncio.subprocess.PIPE,
                stdout=output,
                stderr=output,
                pass_fds=[*(sock.fileno() for sock in self._listening(replica)), theirs.fileno()],
                env=self._replica_environment(replica),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        replica.process = process
        replica.exited = asyncio.Event()
        replica.warm = False
        replica.reloading = False
        replica.last_ping = asyncio.get_running_loop().time()
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(spec))
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        process.stdin.close()
        replica.link = await Link.open(ours)
        log.info("replica_started", **replica.fields, pid=process.pid, chip=replica.plan.chip)
        self._spawn_task(replica.link.run(self._on_request))
        self._spawn_task(self._follow(replica, process))
        self._write_metrics()

    async def _follow(self, replica: Child, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        loop = asyncio.get_running_loop()
        served_s = loop.time() - replica.warm_since if replica.warm else 0.0
        replica.warm = False
        replica.reloading = False
        replica.exited.set()
        replica.reload_done.set()
        if replica.link is not None:
            replica.link.close()
        forget_process(replica.metrics_folder, process.pid)
        self._write_metrics()
        if self._stopping:
            log.info("replica_exited", **replica.fields, pid=process.pid, code=code)
            return
        if not self.host_ready:
            log.error(
                "replica_exited_while_starting",
                **replica.fields,
                code=code,
                status=replica.status,
            )
            self.notifier.status(f"start failed: replica {replica.index} exited with {code}")
            self.exit_code = 1
            self._request_stop()
            return
        replica.failures = 0 if served_s >= STABLE_AFTER_S else replica.failures + 1
        delay = backoff_s(replica.failures)
        log.error(
            "replica_restarting",
            **replica.fields,
            pid=process.pid,
            code=code,
            served_s=round(served_s, 1),
            in_s=delay,
        )
        if replica.failures >= FAILING_AFTER and not replica.failing:
            replica.failing = True
            log.error("replica_failing", **replica.fields, failures=replica.failures, code=code)
            self._write_metrics()
        self._report()
        await self._restart(replica, delay)

    async def _restart(self, replica: Child, delay_s: float) -> None:
        while True:
            await asyncio.sleep(delay_s)
            if self._stopping:
                return
            replica.restarts += 1
            try:
                await self._start(replica, warm_first=True)
                return
            except OSError as error:  # could not even start the process: try again later
                replica.failures += 1
                delay_s = backoff_s(replica.failures)
                log.error("replica_spawn_failed", **replica.fields, reason=str(error))

    # -- what the replicas say ---------------------------------------------------------------

    def _on_notify(self, replica: Child, sock: socket.socket) -> None:
        for sender, fields in read_messages(sock):
            if sender is None or sender != replica.pid or not replica.alive:
                continue  # a predecessor's last words, or not from the replica at all
            self._on_fields(replica, fields)

    def _on_fields(self, replica: Child, fields: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        if "WATCHDOG" in fields:
            replica.last_ping = loop.time()
        if "STATUS" in fields:
            replica.status = fields["STATUS"]
            if not self.host_ready:
                self.notifier.status(f"replica {replica.index}: {replica.status}")
        if fields.get("RELOADING") == "1":
            replica.reloading = True
        if fields.get("READY") == "1":
            if replica.reloading:
                replica.reloading = False
                replica.reload_done.set()
            elif not replica.warm:
                replica.warm = True
                replica.warm_since = loop.time()
                self._on_warm(replica)

    def _on_warm(self, replica: Child) -> None:
        log.info("replica_warm", **replica.fields, pid=replica.pid)
        if replica.failing:
            replica.failing = False
            log.info("replica_recovered", **replica.fields)
        if self.host_ready:
            self._tell(replica, {"op": "host_ready"})
        elif all(r.alive and r.warm for r in self.replicas):
            self.host_ready = True
            for each in self.replicas:
                self._tell(each, {"op": "host_ready"})
            models = len(self.source.config.models)
            count = len(self.replicas)
            self.notifier.ready(f"serving {models} model version(s) on {count} replicas")
            log.info("ready", models=models, replicas=len(self.replicas))
            if self._reload_pending:
                self._request_reload()
        self._write_metrics()
        if self.host_ready:
            self._report()

    def _tell(self, replica: Child, message: Message) -> None:
        if replica.link is not None:
            with contextlib.suppress(LinkClosed, ConnectionError):
                replica.link.send(message)

    async def _on_request(self, message: Message) -> Message | None:
        """A replica forwards an admin load/unload: roll it through every serving replica."""
        op, name = message.get("op"), str(message.get("name", ""))
        if op not in ("load", "unload"):
            return {"error": "InferenceError", "message": f"unknown op {op!r}"}
        async with self._roll:
            for replica in self.replicas:
                if not replica.runs_models:
                    continue
                if not (replica.alive and replica.warm and replica.link is not None):
                    continue
                try:
                    reply = await replica.link.call({"op": op, "name": name})
                except LinkClosed:
                    continue  # it died: it starts again with the models as they are now
                if reply.get("error"):
                    log.error("admin_change_failed", op=op, model=name, **replica.fields)
                    return {"error": reply["error"], "message": reply.get("message", "")}
            if op == "unload":
                self._unloaded.add(name)
            else:
                self._unloaded.discard(name)
            log.info("admin_change_rolled", op=op, model=name)
        return None

    def _report(self) -> None:
        """STATUS= for systemd: how many replicas serve, and which ones are not."""
        engines = [r for r in self.replicas if r.runs_models]
        serving = [r for r in engines if r.alive and r.warm]
        text = f"serving on {len(serving)} of {len(engines)} replicas"
        frontends = [r for r in self.replicas if not r.runs_models]
        if frontends:
            up = sum(1 for r in frontends if r.alive and r.warm)
            text += f", {up} of {len(frontends)} front ends"
        failing = [f"{r.plan.label} {r.index}" for r in self.replicas if r.failing]
        if failing:
            text += f"; failing: {', '.join(failing)}"
        self.notifier.status(text)

    def _write_metrics(self) -> None:
        with contextlib.suppress(OSError):
            write_text(
                self._rundir / "metrics" / SUPERVISOR_FILE, [ChildrenCollector(self.replicas)]
            )

    async def _watch_replicas(self) -> None:
        """Kill a warm replica whose watchdog pings stopped (its event loop is stuck)."""
        interval = self.notifier.watchdog_interval()
        assert interval is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval / 2)
            for replica in self.replicas:
                silent_s = loop.time() - replica.last_ping
                if replica.alive and replica.warm and silent_s > interval * 2:
                    log.error(
                        "replica_watchdog_timeout",
                        **replica.fields,
                        silent_s=round(silent_s, 1),
                    )
                    with contextlib.suppress(ProcessLookupError):
                        assert replica.process is not None
                        replica.process.kill()

    # -- signals -----------------------------------------------------------------------------

    def _request_reload(self) -> None:
        if not self.host_ready:
            log.info("reload_deferred_until_ready")
            self._reload_pending = True
            return
        self._reload_pending = False
        self._spawn_task(self._reload())

    async def _reload(self) -> None:
        async with self._roll:
            log.info("rolling_reload", replicas=len(self.replicas))
            self.notifier.reloading()
            failed = []
            for replica in self.replicas:
                if not replica.runs_models:
                    continue  # it serves what the engines publish
                if not (replica.alive and replica.warm and replica.process is not None):
                    continue  # starting: it reads the config as it is now
                replica.reload_done = asyncio.Event()
                replica.process.send_signal(signal.SIGHUP)
                await replica.reload_done.wait()
                if replica.exited.is_set() or "failed" in replica.status:
                    failed.append(str(replica.index))
                log.info("replica_reloaded", **replica.fields, status=replica.status)
            try:
                self._models = self.source.reread().models
                self._unloaded.clear()
            except Exception as error:  # the replicas have said why already; keep the models
                log.error("reload_config_invalid", reason=str(error))
            status = f"serving; reload failed on replica {', '.join(failed)}" if failed else ""
            self.notifier.ready(status or f"serving on {len(self.replicas)} replicas")

    def _request_stop(self) -> None:
        if self._stopping:
            for replica in self.replicas:  # asked twice: the replicas skip their unready window
                if replica.alive and replica.process is not None:
                    replica.process.send_signal(signal.SIGTERM)
            return
        self._stopping = True
        self._stop.set()

    async def _stop_replicas(self) -> None:
        log.info("replicas_stopping", grace_s=self.grace_s)
        self.notifier.stopping()
        # Front ends first: they stop accepting and drain, their last requests answered by the
        # engines, which then stop.
        # The whole stop keeps to one budget, so systemd's stop timeout holds for both kinds.
        end = asyncio.get_running_loop().time() + self.grace_s + EXIT_MARGIN_S
        await self._stop_group([r for r in self.replicas if not r.runs_models], end)
        await self._stop_group([r for r in self.replicas if r.runs_models], end)

    async def _stop_group(self, group: list[Child], end: float) -> None:
        live = [r for r in group if r.alive and r.process is not None]
        for replica in live:
            with contextlib.suppress(ProcessLookupError):
                replica.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        waits = [asyncio.ensure_future(replica.exited.wait()) for replica in live]
        if waits:
            left = max(end - asyncio.get_running_loop().time(), 1.0)
            _, pending = await asyncio.wait(waits, timeout=left)
            for waiter in pending:
                waiter.cancel()

    async def _kill_leftovers(self) -> None:
        leftovers = [r for r in self.replicas if r.alive and r.process is not None]
        for replica in leftovers:
            log.error("replica_stop_timeout", **replica.fields)
            with contextlib.suppress(ProcessLookupError):
                replica.process.kill()  # type: ignore[union-attr]
        for replica in leftovers:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(replica.process.wait(), 5.0)  # type: ignore[union-attr]


def run_supervisor(source: ConfigSource, plans: list[ReplicaPlan], binds: list[str]) -> int:
    async def main() -> int:
        return await Supervisor(source, plans, binds).run()

    return asyncio.run(main())


def serve_host(source: ConfigSource) -> int:
    """Serve with the replicas (engines) and front ends `[server]` asks for; one replica and no
    front end is the single process."""
    cpus = usable_cpus()
    plans = plan_replicas(source.config, tpu_chips(), cpus, operator_threads())
    frontends = frontend_count(source.config, cpus, len(plans))
    if frontends:
        plans = [replace(plan, role="engine") for plan in plans] + plan_frontends(frontends)
    if len(plans) == 1:
        from appliance.lifecycle.server import run

        return run(source.config, reread_config=source.reread)
    return run_supervisor(source, plans, list(source.config.server.bind))
