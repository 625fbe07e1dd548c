"""The clients of HTTP requests, watched together by one timer: a body bounded by stalls, a
request withdrawn when its client leaves while it waits.

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
# saves the model a row at most. A request that waits longer is watched from then on (from the
# next check of `ClientWatches`, within as long again), and a client that left earlier is seen at
# once: its disconnect message waits in the receive queue.
WATCH_AFTER_S = 0.1
# A body that brings no byte for this long is refused (408) and its connection closed: long
# enough for a client's TCP to ride out a few retransmissions, short enough that a client that
# stalls on purpose (slowloris) cannot hold connections for good.
BODY_STALL_S = 10.0
# Bytes a second a body must average once it has taken BODY_STALL_S: a client that trickles a
# byte every few seconds never stalls, yet would hold its connection for as long as it likes.
# The slowest link a model's client is on still sends kilobytes a second.
BODY_MIN_RATE = 240.0


def header_value(headers: dict[bytes, bytes], name: bytes) -> str | None:
    """The header `name` (lowercase) of `headers` as text, None when absent."""
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


class ClientWatches:
    """The watches on one app's requests, checked together, every `watch_after_s` while any
    request is in flight, by one timer: a timer per request cost about 1 us of the loop's time,
    a third of what the whole watch costs otherwise (the batcher keeps its deadlines the same
    way). A check refuses a body that brought no byte for `body_stall_s`, or that has taken
    that long and averaged under `body_min_rate` bytes a second, and starts the watch for the
    client leaving on a request that has waited `watch_after_s` or more."""

    def __init__(
        self,
        watch_after_s: float = WATCH_AFTER_S,
        body_stall_s: float = BODY_STALL_S,
        body_min_rate: float = BODY_MIN_RATE,
    ) -> None:
        self.watch_after_s = watch_after_s
        self.body_stall_s = body_stall_s
        self.body_min_rate = body_min_rate
        self._watches: set[ClientWatch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, watch: ClientWatch) -> None:
        self._watches.add(watch)
        if self._timer is None or self._loop is not watch.loop:
            self._loop = watch.loop
            self._timer = watch.loop.call_later(self.watch_after_s, self._check)

    def discard(self, watch: ClientWatch) -> None:
        self._watches.discard(watch)

    def _check(self) -> None:
        self._timer = None
        if not self._watches or self._loop is None:
            return
        now = self._loop.time()
        for watch in tuple(self._watches):
            watch.check(now)
        if self._watches:
            self._timer = self._loop.call_later(self.watch_after_s, self._check)


class ClientWatch:
    """One request's client: `read_body`, then `infer`, then `close` (always); `watches`
    checks on it meanwhile."""

    __slots__ = (
        "_began_at",
        "_handler",
        "_last_byte_at",
        "_reading",
        "_receive",
        "_received",
        "_waiting",
        "_watch",
        "_watches",
        "body_refused",
        "client_left",
        "loop",
    )

    def __init__(self, receive: Receive, watches: ClientWatches) -> None:
        loop = asyncio.get_running_loop()
        handler = asyncio.current_task()
        assert handler is not None
        self.loop = loop
        self._receive = receive
        self._handler = handler
        self._watches = watches
        self._began_at = self._last_byte_at = loop.time()
        self._received = 0
        self._reading = False
        self._waiting = False
        self._watch: asyncio.Task[None] | None = None
        self.body_refused: str | None = None  # why a check refused the body, when it did
        self.client_left = False
        watches.add(self)

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
        """The body as sent (not inflated); 413 past `limit` bytes, 408 when it stalls or
        trickles."""
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
                self._received = size
                self._last_byte_at = self.loop.time()
        except asyncio.CancelledError:
            if self.body_refused is None:
                raise
            self._take_back_cancellation()
            raise HTTPFailure(408, self.body_refused, {"Connection": "close"}) from None
        finally:
            self._reading = False
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def infer(
        self, plane: DataPlane, request: InferRequest, model: ServedModel | None
    ) -> InferResponse | None:
        """`plane.infer(request, model)`, or None when the client leaves first: a request still
        waiting once it is `watch_after_s` old is then withdrawn from the queue (or its answer
        dropped, if its batch had started). Call it once the body has been read: the next ASGI
        message is then the disconnect."""
        self._waiting = True
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
        self._watches.discard(self)
        self._stop_watch()

    def check(self, now: float) -> None:
        """What `ClientWatches` does for this request at `now` (see there)."""
        if self._reading:
            watches = self._watches
            taken_s = now - self._began_at
            if now - self._last_byte_at >= watches.body_stall_s:
                self._refuse_body(
                    f"the request body stalled: no data for {watches.body_stall_s:g} s"
                )
            elif (
                taken_s >= watches.body_stall_s and self._received < taken_s * watches.body_min_rate
            ):
                self._refuse_body(
                    f"the request body is too slow: {self._received} bytes in {taken_s:.0f} s, "
                    f"under {watches.body_min_rate:g} bytes a second"
                )
        elif (
            self._waiting
            and self._watch is None
            and now - self._began_at >= self._watches.watch_after_s
        ):
            self._watch = self.loop.create_task(self._watch_for_disconnect())

    def _refuse_body(self, reason: str) -> None:
        self.body_refused = reason
        self._handler.cancel()

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
        # A check or the watch cancelled the handler and the cancellation is handled here
        # (Python 3.10 keeps no count of cancellations to take back).
        if sys.version_info >= (3, 11):
            self._handler.uncancel()
