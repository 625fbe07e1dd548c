"""The client of one HTTP request, watched by one timer: its body bounded by stalls, its request
withdrawn when it leaves while the request waits.

The server sets Hypercorn no read timeout, which would wrap every socket read in a task and a
timer (about 4 us more per read than a plain await, on uvloop here). A connection that sends
nothing is still let go: by Hypercorn's keep-alive timer until its request's headers are
complete, and from then on, while its body arrives, by this module. Once the body is in, the
client owes nothing until its reply, and its request is bounded by its deadline.
"""

from __future__ import annotations

import asyncio
import sys
import zlib

from starlette.types import Receive

from appliance.dataplane import DataPlane, InferRequest, InferResponse
from appliance.errors import InvalidInput
from appliance.repository import ServedModel
from appliance.rest.errors import HTTPFailure

# A client that went away: nginx's convention, so dashboards can tell it from server errors.
CLIENT_CLOSED = 499
# A request answered sooner than this is not watched for its client leaving: a watcher is a task
# (about 3 us of the loop's time per request here), and withdrawing a request that waited less
# saves the model a row at most. A request that waits longer is watched from then on, and a client
# that left earlier is seen at once: its disconnect message waits in the receive queue.
WATCH_AFTER_S = 0.1
# A body that brings no byte for this long is refused (408) and its connection closed: long
# enough for a client's TCP to ride out a few retransmissions, short enough that a client that
# stalls on purpose (slowloris) cannot hold connections for good.
BODY_STALL_S = 10.0


def header_value(headers: dict[bytes, bytes], name: bytes) -> str | None:
    """The header `name` (lowercase) of `headers` as text, None when absent."""
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


class ClientWatch:
    """One request's client: `read_body`, then `infer`, then `close` (always).

    One timer serves the whole request. It first fires WATCH_AFTER_S after the request began; a
    body still arriving is then checked for a stall (and the timer set again for the next check),
    a request waiting for its answer is watched for the client leaving, and a request already past
    both costs nothing more.
    """

    def __init__(self, receive: Receive, body_stall_s: float = BODY_STALL_S) -> None:
        loop = asyncio.get_running_loop()
        handler = asyncio.current_task()
        assert handler is not None
        self._loop = loop
        self._receive = receive
        self._handler = handler
        self._body_stall_s = body_stall_s
        self._last_byte_at = loop.time()
        self._reading = False
        self._waiting = False
        self._watch_due = False
        self._watch: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(WATCH_AFTER_S, self._tick)
        self.stalled = False
        self.client_left = False

    async def read_body(self, headers: dict[bytes, bytes], limit: int) -> bytes:
        """The whole body, inflated as its Content-Encoding says; 413 past `limit` bytes
        (compressed or not), 408 when it stalls."""
        body = await self.read_raw_body(headers, limit)
        encoding = (header_value(headers, b"content-encoding") or "identity").lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise HTTPFailure(
                415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)"
            )
        # wbits 47 accepts gzip and zlib headers; max_length guards against decompression bombs.
        inflater = zlib.decompressobj(47)
        try:
            plain = inflater.decompress(body, limit + 1)
        except zlib.error as error:
            raise InvalidInput(f"body is not valid {encoding} data: {error}") from None
        if len(plain) > limit or inflater.unconsumed_tail:
            raise HTTPFailure(413, f"decompressed request body exceeds {limit} bytes")
        return plain

    async def read_raw_body(self, headers: dict[bytes, bytes], limit: int) -> bytes:
        """The body as sent (not inflated); 413 past `limit` bytes, 408 when it stalls."""
        declared = header_value(headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPFailure(413, f"request body of {declared} bytes exceeds {limit} bytes")
        chunks = []
        size = 0
        self._reading = True
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    # The client left mid-upload: its request, not a server error (nor a 200).
                    raise HTTPFailure(CLIENT_CLOSED, "the client closed the connection mid-body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise HTTPFailure(413, f"request body exceeds {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                self._last_byte_at = self._loop.time()
        except asyncio.CancelledError:
            if not self.stalled:
                raise
            self._take_back_cancellation()
            raise HTTPFailure(
                408,
                f"the request body stalled: no data for {self._body_stall_s:g} s",
                {"Connection": "close"},
            ) from None
        finally:
            self._reading = False
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def infer(
        self, plane: DataPlane, request: InferRequest, model: ServedModel | None
    ) -> InferResponse | None:
        """`plane.infer(request, model)`, or None when the client leaves first: a request still
        waiting after WATCH_AFTER_S is then withdrawn from the queue (or its answer dropped, if
        its batch had started). Call it once the body has been read: the next ASGI message is
        then the disconnect."""
        self._waiting = True
        if self._watch_due:
            self._start_watch()
        try:
            return await plane.infer(request, model)
        except asyncio.CancelledError:
            if not self.client_left:
                raise
            self._take_back_cancellation()
            return None
        finally:
            self._waiting = False
            self._stop_watch()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_watch()

    def _tick(self) -> None:
        self._timer = None
        self._watch_due = True
        if self._reading:
            quiet_s = self._loop.time() - self._last_byte_at
            if quiet_s >= self._body_stall_s:
                self.stalled = True
                self._handler.cancel()
            else:
                self._timer = self._loop.call_later(self._body_stall_s - quiet_s, self._tick)
        elif self._waiting:
            self._start_watch()

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = self._loop.create_task(self._watch_for_disconnect())

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _watch_for_disconnect(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.client_left = True
            self._handler.cancel()

    def _take_back_cancellation(self) -> None:
        # The timer or the watch cancelled the handler and the cancellation is handled here
        # (Python 3.10 keeps no count of cancellations to take back).
        if sys.version_info >= (3, 11):
            self._handler.uncancel()
