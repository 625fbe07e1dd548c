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
from appliance.repository import ModelRepository

log = structlog.get_logger("aegis.channel")

# How long a connecting front end has to say hello.
HELLO_TIMEOUT_S = 5.0


class _Request:
    """One request of a front end here, told by the batcher what becomes of it (`Progress`).

    The front end hears when its batch starts. Its inputs are in the front end's arena, which
    frees them when the reply arrives, so a reply that comes before its batch has let go of them
    (a deadline passed, or its client left, while the batch ran) waits until it has.
    """

    __slots__ = ("_ended", "_peer", "_waiter", "id", "running", "task")

    def __init__(self, peer: _FrontendPeer, request_id: int) -> None:
        self._peer = peer
        self.id = request_id
        self.task: asyncio.Task[None] | None = None
        self.running = False
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def started(self) -> None:
        self.running = True
        self._peer.protocol.queue((STARTED, self.id))

    def released(self) -> None:
        self._ended = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def inputs_released(self) -> None:
        if self.running and not self._ended:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class _FrontendPeer:
    """One connected front end: its arena, and the requests it has in flight here."""

    def __init__(self, server: EngineServer, frontend: int, arena: MappedArena) -> None:
        self.server = server
        self.frontend = frontend
        self.arena = arena
        self.protocol = FrameProtocol(self._on_messages, self._on_lost)
        self.in_flight: dict[int, _Request] = {}
        self.closed = asyncio.Event()

    def _on_messages(self, messages: list[Message]) -> None:
        for message in messages:
            if message[0] == INFER:
                infer = Infer._make(message)
                request = _Request(self, infer.id)
                self.in_flight[infer.id] = request
                request.task = self.server.spawn(self._infer(infer, request))
            elif message[0] == CANCEL:
                leaving = self.in_flight.get(message[1])
                # A running batch keeps it: cancelling would not stop the model.
                if leaving is not None and leaving.task is not None and not leaving.running:
                    leaving.task.cancel()

    def _on_lost(self, _error: Exception | None) -> None:
        self.server.peers.discard(self)
        self.closed.set()
        if not self.in_flight:
            self.arena.close()

    async def _infer(self, infer: Infer, request: _Request) -> None:
        try:
            reply = await self.server.answer(infer, self.arena, request)
        except asyncio.CancelledError:
            # Its batch may have taken it in the same turn as the cancel arrived.
            await request.inputs_released()
            reply = (FAILED, infer.id, InferenceError.__name__, "withdrawn: the client left")
        finally:
            del self.in_flight[infer.id]
        if self.closed.is_set():
            if not self.in_flight:
                self.arena.close()
            return
        self.protocol.queue(reply)


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

    async def answer(self, request: Infer, arena: MappedArena, progress: _Request) -> Message:
        """Run one request; the reply message, an error one included, once the batch that ran
        it no longer reads its inputs from `arena`."""
        reply = await self._run(request, arena, progress)
        if reply[0] == FAILED:
            await progress.inputs_released()
        return reply

    async def _run(self, request: Infer, arena: MappedArena, progress: _Request) -> Message:
        try:
            model = self.repository.get(request.model, request.version)
            inputs: dict[str, np.ndarray] = {
                name: arena.array(*given) if isinstance(given, tuple) else given
                for name, given in request.inputs.items()
            }
            rows = request.rows
            if model.fingerprint != request.fingerprint:
                # The front end checked it against another artifact (a reload raced it).
                rows = model.check_inputs(inputs, request.datatypes)
                for name in request.wanted:
                    model.output_spec(name)
            deadline = asyncio.get_running_loop().time() + request.timeout_s
            result = await model.infer(inputs, rows, deadline, progress)
            outputs = {name: pack(result.outputs[name]) for name in request.wanted}
        except InferenceError as error:
            return (FAILED, request.id, type(error).__name__, str(error))
        except KeyError as error:
            failure = InvalidInput(f"the model has no output {error}")
            return (FAILED, request.id, type(failure).__name__, str(failure))
        except Exception as error:
            log.error("engine_request_failed", model=request.model, exc_info=error)
            return (FAILED, request.id, ModelFailed.__name__, "internal error in the engine")
        return (
            DONE,
            request.id,
            outputs,
            result.batch_size,
            result.queue_s,
            result.compute_s,
            result.fallback,
            result.batch,
        )

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
