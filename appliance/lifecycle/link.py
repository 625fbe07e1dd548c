"""The control link between the supervisor and one replica: JSON lines over a socket pair.

Either side sends one-way messages (`send`) and calls (`call`: a message with an `id`, answered
by a `reply` with the same id). The replica asks the supervisor to roll an admin load/unload
through every replica; the supervisor tells a replica to load/unload locally and that the host is
ready. Readiness and status go the other way over the notify protocol, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from appliance.errors import InferenceError, LoadFailed, ModelNotFound

log = structlog.get_logger("aegis.lifecycle")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]

# The errors an admin call may answer with, by name: the caller raises the same class, so the
# HTTP answer is the one the replica that did the work would have given.
_ERRORS: dict[str, type[InferenceError]] = {
    cls.__name__: cls for cls in (InferenceError, LoadFailed, ModelNotFound)
}
# Long enough for any admin message; a longer line is a broken peer.
_LINE_LIMIT = 1 << 20


class LinkClosed(ConnectionError):
    """The other side went away: its calls can no longer be answered."""


def error_fields(error: InferenceError) -> Message:
    kind = type(error).__name__ if type(error).__name__ in _ERRORS else "InferenceError"
    return {"error": kind, "message": str(error)}


def raise_for_reply(reply: Message) -> None:
    """Raise the error a reply carries, as the class the other side raised."""
    kind = reply.get("error")
    if kind:
        raise _ERRORS.get(str(kind), InferenceError)(str(reply.get("message", "")))


class Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Link:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_LIMIT)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: Message) -> None:
        if self._closed:
            raise LinkClosed("the link is closed")
        self._writer.write(orjson.dumps(message) + b"\n")

    async def call(self, message: Message) -> Message:
        """Send `message` and wait for its reply (bound the wait at the caller)."""
        call_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self.send({**message, "id": call_id})
            await self._writer.drain()
            return await future
        finally:
            self._pending.pop(call_id, None)

    async def run(self, handler: Handler) -> None:
        """Read messages until the other side closes; each call runs `handler` in its own task."""
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except (ValueError, ConnectionError) as error:  # over the limit, or reset
                    log.error("control_link_broken", reason=str(error))
                    break
                if not line:
                    break
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.error("control_link_bad_line", line=line[:200])
                    continue
                if "reply" in message:
                    future = self._pending.get(message["reply"])
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                task = asyncio.get_running_loop().create_task(self._answer(handler, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self.close()

    async def _answer(self, handler: Handler, message: Message) -> None:
        try:
            result = await handler(message) or {}
        except InferenceError as error:
            result = error_fields(error)
        except Exception as error:  # the caller still gets an answer; the log gets the trace
            log.error("control_link_handler_failed", op=message.get("op"), exc_info=error)
            result = {"error": "InferenceError", "message": "internal error"}
        if "id" in message and not self._closed:
            with contextlib.suppress(LinkClosed, ConnectionError):
                self.send({**result, "reply": message["id"]})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkClosed("the other side of the control link went away"))
        for task in self._tasks:
            task.cancel()
        self._writer.close()
