"""The HTTP doors' watch on a request's client (`ClientWatch`), on a real event loop: no watch for a
request answered at once, a client that left before the watch started seen when it starts, a
cancellation from elsewhere never taken for the client's, and a body refused when it stalls, not
while it keeps arriving."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance.dataplane import DataPlane, InferRequest, InferResponse
from appliance.repository import ModelRepository, ServedModel
from appliance.rest import client as client_module
from appliance.rest.client import ClientWatch, ClientWatches
from appliance.rest.errors import HTTPFailure
from tests.support.readiness import RepositoryReadiness

REQUEST = InferRequest("m", None, {}, {})
ANSWER = InferResponse("m", "1", None, [], 1, 0.0, 0.0)
DISCONNECT = {"type": "http.disconnect"}


class HeldPlane(DataPlane):
    """A data plane whose requests wait until `answer` is set; it counts the ones withdrawn."""

    def __init__(self) -> None:
        repository = ModelRepository()
        super().__init__(repository, RepositoryReadiness(repository))
        self.answer = asyncio.Event()
        self.withdrawn = 0

    async def infer(self, request: InferRequest, model: ServedModel | None = None) -> InferResponse:
        try:
            # Answered in a later turn of the loop at the earliest, as a batch is.
            await asyncio.sleep(0)
            await self.answer.wait()
        except asyncio.CancelledError:
            self.withdrawn += 1
            raise
        return ANSWER


async def infer_watched(
    plane: DataPlane,
    receive: Callable[[], Awaitable[dict[str, Any]]],
    watches: ClientWatches | None = None,
) -> InferResponse | None:
    """What a door does once the body is in: the infer, watched, and the watch closed."""
    watch = ClientWatch(receive, watches or ClientWatches())
    try:
        return await watch.infer(plane, REQUEST, None)
    finally:
        watch.close()


class Client:
    """The ASGI receive of a connection: `messages` once each, then a wait for ever (connected)."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = list(messages)
        self.calls = 0
        self.watched = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        self.watched.set()
        if self.messages:
            return self.messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable: the wait above never ends")


def test_a_request_answered_at_once_is_never_watched() -> None:
    async def scenario() -> tuple[InferResponse | None, int]:
        plane, client = HeldPlane(), Client(DISCONNECT)
        plane.answer.set()
        result = await infer_watched(plane, client.receive)
        # Past the watch's delay: a timer left behind would have started a watch by now.
        await asyncio.sleep(client_module.WATCH_AFTER_S * 2)
        return result, client.calls

    result, receive_calls = asyncio.run(scenario())
    assert result is ANSWER
    assert receive_calls == 0


def test_a_client_that_left_before_the_watch_started_is_seen_when_it_starts() -> None:
    async def scenario() -> tuple[InferResponse | None, int]:
        plane, client = HeldPlane(), Client(DISCONNECT)
        result = await infer_watched(plane, client.receive, ClientWatches(watch_after_s=0.0))
        handler = asyncio.current_task()
        assert handler is not None
        if sys.version_info >= (3, 11):
            assert handler.cancelling() == 0, "the handled cancellation was not taken back"
        return result, plane.withdrawn

    result, withdrawn = asyncio.run(scenario())
    assert result is None
    assert withdrawn == 1


def test_a_cancellation_from_elsewhere_is_not_taken_for_the_client_leaving() -> None:
    async def scenario() -> None:
        # A message that is not a disconnect ends the watch's first wait without the client
        # leaving; the handler is then cancelled by the server (a drain's deadline, say).
        plane, client = HeldPlane(), Client({"type": "http.request", "body": b""})
        watches = ClientWatches(watch_after_s=0.0)
        handler = asyncio.get_running_loop().create_task(
            infer_watched(plane, client.receive, watches)
        )
        await client.watched.wait()
        await asyncio.sleep(0)  # the watch handles the message
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler

    asyncio.run(scenario())


class Upload:
    """The ASGI receive of a body sent in `parts` parts `gap_s` apart; one that does not
    `complete` sends nothing after them."""

    def __init__(self, parts: int, gap_s: float, complete: bool = True) -> None:
        self.parts = parts
        self.gap_s = gap_s
        self.complete = complete

    async def receive(self) -> dict[str, Any]:
        if self.parts == 0:
            await asyncio.Event().wait()  # stalled: the client sends nothing more
        await asyncio.sleep(self.gap_s)
        self.parts -= 1
        last = self.parts == 0 and self.complete
        return {"type": "http.request", "body": b"x", "more_body": not last}


def read(upload: Upload, stall_s: float, min_rate: float = 1.0) -> bytes:
    async def scenario() -> bytes:
        watches = ClientWatches(body_stall_s=stall_s, body_min_rate=min_rate)
        watch = ClientWatch(upload.receive, watches)
        try:
            return await watch.read_raw_body({}, 1 << 20)
        finally:
            watch.close()
            handler = asyncio.current_task()
            assert handler is not None
            if sys.version_info >= (3, 11):
                assert handler.cancelling() == 0, "the stall's cancellation was not taken back"

    return asyncio.run(scenario())


def test_a_body_that_keeps_arriving_is_read_for_longer_than_the_stall_bound() -> None:
    # 15 parts 0.1 s apart: 1.5 s in all, never more than 0.1 s without a byte (a tenth of the
    # bound, so that a loaded machine does not make a stall of it).
    assert read(Upload(15, 0.1), stall_s=1.0) == b"x" * 15


def test_a_body_that_stops_arriving_is_refused_with_408() -> None:
    with pytest.raises(HTTPFailure) as refused:
        read(Upload(2, 0.0, complete=False), stall_s=0.3)
    assert refused.value.status == 408
    assert refused.value.headers == {"Connection": "close"}
    assert "stalled" in str(refused.value)


def test_a_body_trickled_under_the_minimum_rate_is_refused_once_it_took_the_stall_bound() -> None:
    # A byte every 0.05 s (20 bytes a second) never stalls for 0.5 s, and falls short of 1,000
    # bytes a second; 200 parts would take 10 s.
    started = time.monotonic()
    with pytest.raises(HTTPFailure) as refused:
        read(Upload(200, 0.05), stall_s=0.5, min_rate=1000.0)
    assert refused.value.status == 408
    assert refused.value.headers == {"Connection": "close"}
    assert "too slow" in str(refused.value) and "under 1000 bytes a second" in str(refused.value)
    assert time.monotonic() - started >= 0.5
