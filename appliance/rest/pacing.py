"""How long a refused keep-alive connection is held before its next request is read.

Under a short burst a refused client is told to come back in a second. Under sustained overload
that is not enough: every connection beyond the queue comes back each second to be refused
again, and each refusal costs the event loop a whole HTTP exchange (read, parse, reply, log), so
the more clients wait, the less of the loop is left for the requests it admitted (16x overload of
the tiny model on one core: 420-540 refusals a second, 1,100-1,350 answers; held longer, 160-170
refusals and 1,640-1,700 answers; bench/RESULTS.md).
So the hold, and the Retry-After that announces it, doubles for each second that refusals have
gone on without a pause, up to `MAX_HOLD_S`; the first second after a pause is back to one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from appliance.errors import QueueFull

FIRST_HOLD_S = 1
MAX_HOLD_S = 8
# Refusals further apart than this are separate bursts.
PAUSE_S = 1.0


class OverloadPacing:
    """The hold of the next refused connection, from how long refusals have gone on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self._last = 0.0
        self._released = asyncio.Event()

    def refused(self) -> int:
        """Note one refusal now; the seconds its connection is held (its Retry-After)."""
        now = self._clock()
        if self._since is None or now - self._last > PAUSE_S:
            self._since = now
        self._last = now
        doublings = min(int(now - self._since), MAX_HOLD_S.bit_length())
        return min(FIRST_HOLD_S << doublings, MAX_HOLD_S)

    def pace(self, error: Exception) -> None:
        """When `error` is a full queue's refusal, at any door or behind it: count it, and set
        the wait it announces (Retry-After, gRPC's pushback)."""
        if isinstance(error, QueueFull):
            error.retry_after_s = self.refused()

    async def hold(self, seconds: float) -> None:
        """Wait `seconds`, or until `release`."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._released.wait(), seconds)

    def release(self) -> None:
        """End every hold now, and hold nothing from now on: the server is stopping, and a held
        connection must get the end of its reply and be closed within the drain."""
        self._released.set()
