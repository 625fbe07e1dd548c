"""Under sustained overload a refused connection is held, and told to wait, for longer."""

from __future__ import annotations

import asyncio

from appliance.rest.pacing import OverloadPacing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def holds_every(pacing: OverloadPacing, clock: Clock, step_s: float, seconds: float) -> list[int]:
    holds = []
    for _ in range(round(seconds / step_s)):
        holds.append(pacing.refused())
        clock.now += step_s
    return holds


def test_the_hold_doubles_each_second_refusals_go_on_up_to_eight_seconds() -> None:
    clock = Clock()
    pacing = OverloadPacing(clock)
    holds = holds_every(pacing, clock, 0.25, 6.0)
    assert holds[:4] == [1] * 4  # the first second
    assert holds[4:8] == [2] * 4
    assert holds[8:12] == [4] * 4
    assert holds[12:] == [8] * 12


def test_a_pause_in_the_refusals_starts_over_at_one_second() -> None:
    clock = Clock()
    pacing = OverloadPacing(clock)
    assert holds_every(pacing, clock, 0.5, 3.0)[-1] == 4
    clock.now += 1.5
    assert pacing.refused() == 1


def test_release_ends_every_hold_at_once_and_holds_nothing_after() -> None:
    async def run() -> tuple[float, float]:
        pacing = OverloadPacing()
        loop = asyncio.get_running_loop()
        started = loop.time()
        held = asyncio.ensure_future(pacing.hold(30))
        await asyncio.sleep(0)
        pacing.release()
        await held
        ended = loop.time() - started
        again = loop.time()
        await pacing.hold(30)
        return ended, loop.time() - again

    ended, after = asyncio.run(run())
    assert ended < 5 and after < 5  # far below the 30 s asked for
