"""The HTTP doors' watch for a departed client (`infer_while_connected`), on a real event loop:
no watch for a request answered at once, a client that left before the watch started seen when it
starts, and a cancellation from elsewhere never taken for the client's."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from appliance.dataplane import DataPlane, InferRequest, InferResponse
from appliance.repository import ModelRepository, ServedModel
from appliance.rest import inference
from appliance.rest.inference import infer_while_connected
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
        result = await infer_while_connected(plane, REQUEST, None, client.receive)
        # Past the watch's delay: a timer left behind would have started a watch by now.
        await asyncio.sleep(inference.WATCH_AFTER_S * 2)
        return result, client.calls

    result, receive_calls = asyncio.run(scenario())
    assert result is ANSWER
    assert receive_calls == 0


def test_a_client_that_left_before_the_watch_started_is_seen_when_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inference, "WATCH_AFTER_S", 0.0)

    async def scenario() -> tuple[InferResponse | None, int]:
        plane, client = HeldPlane(), Client(DISCONNECT)
        result = await infer_while_connected(plane, REQUEST, None, client.receive)
        handler = asyncio.current_task()
        assert handler is not None
        if sys.version_info >= (3, 11):
            assert handler.cancelling() == 0, "the handled cancellation was not taken back"
        return result, plane.withdrawn

    result, withdrawn = asyncio.run(scenario())
    assert result is None
    assert withdrawn == 1


def test_a_cancellation_from_elsewhere_is_not_taken_for_the_client_leaving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inference, "WATCH_AFTER_S", 0.0)

    async def scenario() -> None:
        # A message that is not a disconnect ends the watch's first wait without the client
        # leaving; the handler is then cancelled by the server (a drain's deadline, say).
        plane, client = HeldPlane(), Client({"type": "http.request", "body": b""})
        handler = asyncio.get_running_loop().create_task(
            infer_while_connected(plane, REQUEST, None, client.receive)
        )
        await client.watched.wait()
        await asyncio.sleep(0)  # the watch handles the message
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler

    asyncio.run(scenario())
