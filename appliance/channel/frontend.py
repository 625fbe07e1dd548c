"""The front end's end of the channel: a link to every engine, and the models they serve.

`EngineLinks` keeps this process's repository equal to what the engines publish: each model
version an engine serves is an `EngineModel` here, which checks requests like a local model and
sends them to the engine serving it with the fewest requests outstanding. An engine that goes
away fails what it held at once and keeps its models "loading" here until it is back, so the
host stays ready while another engine serves them. Of what it held, a request whose batch had
not started is sent once more, to another engine serving its model if there is one; a request
whose batch was running is answered 503 (the client may retry): it may be what killed the engine,
and would take the next one down with it.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import structlog

from appliance import errors
from appliance.batching import BatchResult, Progress
from appliance.channel.arena import Arena
from appliance.channel.wire import (
    CANCEL,
    DONE,
    HELLO,
    INFER,
    MODELS,
    STARTED,
    FrameProtocol,
    Message,
    Placed,
    unpack,
)
from appliance.errors import InferenceError, ModelNotReady, QueueFull
from appliance.metrics import Metrics, ModelMetrics
from appliance.repository import ModelRepository, ModelState, ModelView, ServedModel

log = structlog.get_logger("aegis.channel")

RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 1.0
# The core errors an engine may answer with, by class name.
_ERRORS: dict[str, type[InferenceError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, InferenceError)
}


class EngineLost(ModelNotReady):
    """The engine holding the request exited before answering it."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.started = started  # its batch had started there


@dataclass(eq=False, slots=True)
class _Waiting:
    future: asyncio.Future[BatchResult]
    offsets: list[int]
    key: tuple[str, str]
    started: bool = False


class EngineLink:
    """This front end's connection to one engine, re-opened whenever the engine restarts."""

    def __init__(self, links: EngineLinks, index: int, path: str) -> None:
        self.links = links
        self.index = index
        self.path = path
        self.protocol: FrameProtocol | None = None
        self.views: dict[tuple[str, str], ModelView] = {}
        self.expected: list[tuple[str, str]] = []
        self.published = asyncio.Event()  # its models arrived since it (re)connected
        self._lost = asyncio.Event()
        self._waiting: dict[int, _Waiting] = {}
        self.outstanding: dict[tuple[str, str], int] = {}

    @property
    def open(self) -> bool:
        return self.protocol is not None and self.published.is_set()

    async def run(self) -> None:
        """Connect, serve until the engine goes, and connect again, until cancelled."""
        delay = RECONNECT_FIRST_S
        while True:
            try:
                await self._connect()
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_FIRST_S
            await self._lost.wait()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, self.path)
            hello = pickle.dumps((HELLO, self.links.frontend))
            socket.send_fds(sock, [hello], [self.links.arena.fd])
            self._lost = asyncio.Event()
            protocol = FrameProtocol(self._on_messages, self._on_lost)
            await loop.connect_accepted_socket(lambda: protocol, sock)
        except BaseException:
            sock.close()
            raise
        self.protocol = protocol
        log.info("engine_connected", engine=self.index)

    def _on_messages(self, messages: list[Message]) -> None:
        for message in messages:
            kind = message[0]
            if kind == DONE:
                _, request_id, outputs, batch_size, queue_s, compute_s, fallback, batch = message
                waiting = self._settle(request_id)
                if waiting is not None and not waiting.future.done():
                    arrays = {name: unpack(packed) for name, packed in outputs.items()}
                    result = BatchResult(arrays, batch_size, queue_s, compute_s, fallback, batch)
                    waiting.future.set_result(result)
            elif kind == STARTED:
                for request_id in message[1]:
                    waiting = self._waiting.get(request_id)
                    if waiting is not None:
                        waiting.started = True
            elif kind == MODELS:
                self.views = {(view.name, view.version): view for view in message[1]}
                self.expected = list(message[2])
                self.published.set()
                self.links.rebuild()
            else:  # FAILED
                _, request_id, error_name, text = message
                waiting = self._settle(request_id)
                if waiting is not None and not waiting.future.done():
                    waiting.future.set_exception(_ERRORS.get(error_name, InferenceError)(text))

    def _settle(self, request_id: int) -> _Waiting | None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is not None:
            for offset in waiting.offsets:
                self.links.arena.free(offset)
            self.outstanding[waiting.key] -= 1
        return waiting

    def _on_lost(self, _error: Exception | None) -> None:
        waiting, self._waiting = self._waiting, {}
        if self.links.closing:
            log.info("engine_link_closed", engine=self.index)
        else:
            running = sum(each.started for each in waiting.values())
            log.error(
                "engine_lost",
                engine=self.index,
                in_flight=len(waiting),
                running=running,
                not_started=len(waiting) - running,
            )
        self.protocol = None
        self.published.clear()
        self.views = {}  # its expected versions stay: "loading" here until it is back
        self.outstanding = {}
        for each in waiting.values():
            for offset in each.offsets:
                self.links.arena.free(offset)
            if not each.future.done():
                when = "while running" if each.started else "before starting"
                message = f"engine {self.index} exited {when} the request's batch"
                each.future.set_exception(EngineLost(message, each.started))
        self._lost.set()
        self.links.rebuild()

    async def infer(
        self, model: EngineModel, inputs: dict[str, np.ndarray], rows: int, deadline: float
    ) -> BatchResult:
        protocol = self.protocol
        if protocol is None:
            raise ModelNotReady(f"engine {self.index} is restarting")
        arena = self.links.arena
        placed: dict[str, Placed | np.ndarray] = {}
        offsets: list[int] = []
        for name, array in inputs.items():
            offset = None if array.dtype.hasobject else arena.write(array)
            if offset is None:
                placed[name] = array  # BYTES, or no room in the arena: inside the message
            else:
                offsets.append(offset)
                placed[name] = (offset, array.dtype.str, array.shape)
        loop = asyncio.get_running_loop()
        request_id = next(self.links.ids)
        key = (model.name, model.version)
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._waiting[request_id] = _Waiting(future, offsets, key)
        self.outstanding[key] = self.outstanding.get(key, 0) + 1
        protocol.queue(
            (  # the fields of wire.Infer
                INFER,
                request_id,
                model.name,
                model.version,
                model.fingerprint,
                rows,
                max(deadline - loop.time(), 0.0),
                placed,
                model.datatypes,
                model.wanted,
            )
        )
        try:
            return await future
        except asyncio.CancelledError:
            # Its client left: the engine withdraws it unless its batch runs. Its arena space
            # stays taken until the engine answers.
            if request_id in self._waiting and self.protocol is protocol:
                protocol.queue((CANCEL, request_id))
            raise

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()


class EngineModel(ServedModel):
    """A model version served by one or more engines; this process only checks and routes."""

    def __init__(self, view: ModelView, metrics: ModelMetrics, links: EngineLinks) -> None:
        super().__init__(
            view.name,
            view.version,
            view.config,
            view.signature,
            metrics,
            view.fingerprint,
            view.labels,
        )
        self._view = view
        self._links = links
        self.datatypes = {spec.name: spec.datatype for spec in view.signature.inputs}
        self.wanted = tuple(spec.name for spec in view.signature.outputs)
        config = view.config
        # What the engines' batchers hold at most: beyond it the engine would refuse anyway.
        self._room = config.max_queue_size + config.max_batch_size * config.max_concurrency

    @property
    def device(self) -> str:
        return self._view.device

    @property
    def runtime_name(self) -> str:
        return self._view.runtime_name

    @property
    def artifact_suffix(self) -> str:
        return self._view.artifact_suffix

    def _route(self) -> EngineLink | None:
        key = (self.name, self.version)
        best: EngineLink | None = None
        for link in self._links.links:
            if not (link.open and key in link.views):
                continue
            if best is None or link.outstanding.get(key, 0) < best.outstanding.get(key, 0):
                best = link
        return best

    def check_room(self) -> None:
        link = self._route()
        if link is not None and link.outstanding.get((self.name, self.version), 0) >= self._room:
            raise QueueFull(f"queue full ({self.config.max_queue_size} requests waiting)")

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        deadline: float,
        progress: Progress | None = None,
    ) -> BatchResult:
        """Send the request to an engine (`progress` is for models whose batches run here)."""
        model = self.current()
        if model is not self:
            return await model.infer(inputs, rows, deadline)
        link = self._route()
        if link is None:
            raise ModelNotReady(f"model {self.name!r} version {self.version!r} is not ready")
        try:
            return await link.infer(self, inputs, rows, deadline)
        except EngineLost as lost:
            # Not started there, it cannot be what killed that engine: once more elsewhere.
            retry = None if lost.started else self._route()
            if retry is None:
                raise ModelNotReady(f"{lost}; retry the request") from None
            return await retry.infer(self, inputs, rows, deadline)

    async def retire(self, grace_s: float) -> None:
        self.state = ModelState.UNLOADING


@dataclass
class EngineLinks:
    """A front end's links to every engine, and its repository kept equal to their models."""

    paths: tuple[str, ...]
    repository: ModelRepository
    metrics: Metrics
    arena: Arena
    frontend: int
    links: list[EngineLink] = field(init=False)
    ids: Iterator[int] = field(init=False, default_factory=lambda: itertools.count(1))
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    closing: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.links = [EngineLink(self, index, path) for index, path in enumerate(self.paths)]

    async def start(self) -> None:
        """Connect to every engine; returns once each has said what it serves."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(link.run()) for link in self.links]
        await asyncio.gather(*(link.published.wait() for link in self.links))

    async def reload(self) -> None:
        """Nothing to read here: the engines reload, and publish what they serve then."""

    async def close(self) -> None:
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links:
            link.close()

    def rebuild(self) -> None:
        """Make the repository hold what the engines serve now."""
        views: dict[tuple[str, str], ModelView] = {}
        expected: set[tuple[str, str]] = set()
        for link in self.links:
            for key, view in link.views.items():
                views.setdefault(key, view)
            expected.update(link.expected)
        served = {(model.name, model.version): model for model in self.repository}
        for key, model in served.items():
            if key not in views:
                model.state = ModelState.UNLOADING
                self.repository.remove(*key)
        for key in expected:
            self.repository.expect(*key)
        for key, view in views.items():
            current = served.get(key)
            if current is None or current.fingerprint != view.fingerprint:
                metrics = ModelMetrics(self.metrics, view.name, view.version, batches=False)
                previous = self.repository.put(EngineModel(view, metrics, self))
                if previous is not None:
                    previous.state = ModelState.UNLOADING
        for key in set(self.repository.expected()) - expected:
            self.repository.forget(*key)
