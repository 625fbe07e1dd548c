"""The engine's end of the channel: front ends connect, send checked requests, get outputs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from appliance.batching import BatchResult, Queued
from appliance.channel.arena import MappedArena
from appliance.channel.wire import (
    CANCEL,
    DONE,
    FAILED,
    HELLO,
    INFER,
    MODELS,
    STARTED,
    FrameProtocol,
    Infer,
    Message,
    pack,
)
from appliance.errors import InferenceError, InvalidInput, ModelFailed
from appliance.repository import LocalModel, ModelRepository

log = structlog.get_logger("aegis.channel")

# How long a connecting front end has to say hello.
HELLO_TIMEOUT_S = 5.0


class _Request:
    """One request of a front end here: its place in a batcher, told by the batcher what becomes
    of it (`Progress`), and its reply once its future settles.

    The front end hears when its batch starts. Its inputs are in the front end's arena, which
    frees them when the reply arrives, so a failure that comes before its batch has let go of
    them (a deadline passed while the batch ran) is held until it has.
    """

    __slots__ = ("_held", "_peer", "_released", "id", "queued", "running", "wanted")

    def __init__(self, peer: _FrontendPeer, request_id: int, wanted: tuple[str, ...]) -> None:
        self._peer = peer
        self.id = request_id
        self.wanted = wanted
        self.queued: Queued | None = None
        self.running = False
        self._released = False
        self._held: Message | None = None

    def started(self) -> None:
        self.running = True
        self._peer.note_started(self.id)

    def released(self) -> None:
        self._released = True
        if self._held is not None:
            self._peer.send(self.id, self._held)
            self._held = None

    def settled(self, future: asyncio.Future[BatchResult]) -> None:
        reply = _reply(self.id, self.wanted, future)
        if reply[0] == FAILED and self.running and not self._released:
            self._held = reply
        else:
            self._peer.send(self.id, reply)


def _reply(
    request_id: int, wanted: tuple[str, ...], future: asyncio.Future[BatchResult]
) -> Message:
    """The message that answers a request whose future has settled."""
    if future.cancelled():
        return (FAILED, request_id, InferenceError.__name__, "withdrawn: the client left")
    error = future.exception()
    if error is not None:
        return _failure(request_id, error)
    result = future.result()
    try:
        outputs = {name: pack(result.outputs[name]) for name in wanted}
    except KeyError as missing:
        return _failure(request_id, InvalidInput(f"the model has no output {missing}"))
    except Exception as bug:  # of ours: answered as an internal error, and logged
        return _failure(request_id, bug)
    return (
        DONE,
        request_id,
        outputs,
        result.batch_size,
        result.queue_s,
        result.compute_s,
        result.fallback,
        result.batch,
    )


def _failure(request_id: int, error: BaseException) -> Message:
    if isinstance(error, InferenceError):
        return (FAILED, request_id, type(error).__name__, str(error))
    log.error("engine_request_failed", exc_info=error)
    return (FAILED, request_id, ModelFailed.__name__, "internal error in the engine")


class _FrontendPeer:
    """One connected front end: its arena, and the requests it has in flight here.

    A frame's requests are taken in the turn that reads it, each queued on its model's batcher
    with a callback for its answer: no task or coroutine per request.
    """

    def __init__(self, server: EngineServer, frontend: int, arena: MappedArena) -> None:
        self.server = server
        self.frontend = frontend
        self.arena = arena
        self.protocol = FrameProtocol(self._on_messages, self._on_lost)
        self.in_flight: dict[int, _Request] = {}
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # The ids of the STARTED message that the next frame carries, and that frame's number.
        self._started: list[int] | None = None
        self._started_frame = -1

    def _on_messages(self, messages: list[Message]) -> None:
        for message in messages:
            if message[0] == INFER:
                self._take(Infer._make(message))
            elif message[0] == CANCEL:
                leaving = self.in_flight.get(message[1])
                if leaving is not None and leaving.queued is not None:
                    leaving.queued.cancel()  # a started batch keeps it: the model would not stop

    def _take(self, infer: Infer) -> None:
        """Queue one request on its model; a request refused here is answered at once (no
        batch has read its inputs)."""
        request = _Request(self, infer.id, infer.wanted)
        try:
            model = self.server.repository.get(infer.model, infer.version)
            assert isinstance(model, LocalModel), "an engine serves the models it runs"
            inputs: dict[str, np.ndarray] = {
                name: self.arena.array(*given) if isinstance(given, tuple) else given
                for name, given in infer.inputs.items()
            }
            rows = infer.rows
            if model.fingerprint != infer.fingerprint:
                # The front end checked it against another artifact (a reload raced it).
                rows = model.check_inputs(inputs, infer.datatypes)
                for name in infer.wanted:
                    model.output_spec(name)
            deadline = self._loop.time() + infer.timeout_s
            request.queued = model.enqueue(inputs, rows, deadline, request)
        except Exception as error:
            self.protocol.queue(_failure(infer.id, error))
            return
        self.in_flight[infer.id] = request
        request.queued.future.add_done_callback(request.settled)

    def note_started(self, request_id: int) -> None:
        """Tell the front end that the request's batch started: one STARTED message a frame,
        for every request that started in the turn."""
        if self._started is None or self._started_frame != self.protocol.sent_frames:
            self._started = []
            self._started_frame = self.protocol.sent_frames
            self.protocol.queue((STARTED, self._started))
        self._started.append(request_id)

    def send(self, request_id: int, reply: Message) -> None:
        del self.in_flight[request_id]
        if self.closed.is_set():
            if not self.in_flight:
                self.arena.close()
            return
        self.protocol.queue(reply)

    def _on_lost(self, _error: Exception | None) -> None:
        self.server.peers.discard(self)
        self.closed.set()
        if not self.in_flight:
            self.arena.close()


class EngineServer:
    """Serves the models of `repository` to the front ends that connect to `path`."""

    def __init__(self, repository: ModelRepository, path: str) -> None:
        self.repository = repository
        self.path = path
        self.peers: set[_FrontendPeer] = set()
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._publish_scheduled = False
        repository.watch(self._schedule_publish)

    async def start(self) -> None:
        Path(self.path).unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(self.path)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self.spawn(self._accept())

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            self.spawn(self._greet(sock))

    async def _greet(self, sock: socket.socket) -> None:
        """Take the front end's hello and its arena's descriptor, then serve it."""
        sock.settimeout(HELLO_TIMEOUT_S)
        try:
            data, fds, _flags, _address = await asyncio.to_thread(socket.recv_fds, sock, 256, 1)
        except OSError as error:
            log.warning("frontend_hello_failed", reason=str(error))
            sock.close()
            return
        hello = pickle.loads(data) if data else None
        if not (isinstance(hello, tuple) and hello[0] == HELLO and len(fds) == 1):
            for fd in fds:
                os.close(fd)
            log.warning("frontend_hello_invalid")
            sock.close()
            return
        sock.setblocking(False)
        peer = _FrontendPeer(self, int(hello[1]), MappedArena(fds[0]))
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: peer.protocol, sock)
        self.peers.add(peer)
        peer.protocol.queue(self._models_message())
        log.info("frontend_connected", frontend=peer.frontend)

    def _models_message(self) -> Message:
        views = [model.view() for model in self.repository if model.ready]
        return (MODELS, views, sorted(self.repository.expected()))

    def _schedule_publish(self) -> None:
        if self._publish_scheduled:
            return
        self._publish_scheduled = True
        with contextlib.suppress(RuntimeError):  # no loop: nobody is connected yet
            asyncio.get_running_loop().call_soon(self._publish)
            return
        self._publish_scheduled = False

    def _publish(self) -> None:
        self._publish_scheduled = False
        message = self._models_message()
        for peer in self.peers:
            peer.protocol.queue(message)

    async def drain(self, timeout_s: float) -> None:
        """Take no new front ends; wait until those connected have gone (front ends stop
        first, after their last requests were answered here)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        waits = [asyncio.ensure_future(peer.closed.wait()) for peer in self.peers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout_s)
            for waiter in pending:
                waiter.cancel()

    async def close(self) -> None:
        for peer in list(self.peers):
            if peer.protocol.transport is not None:
                peer.protocol.transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
