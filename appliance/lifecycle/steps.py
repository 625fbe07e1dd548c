"""The blocking steps of bringing a model up (sync, load, convert, compile, warm), each on a thread
of its own that a stop can leave behind.

A step is native code that cannot be interrupted (a download, `torch.export.load`, an XLA compile),
so a start told to stop stops waiting for it instead: the awaiting coroutine is cancelled and the
thread runs on, unjoined. asyncio's `to_thread` would not do: its default executor is joined when
the event loop closes, which held a SIGTERM during a warmup for as long as the compile took. The
threads are non-daemon, so that a process that is not stopping (a script using the Python API)
waits for them as usual; the serving process exits past them (`server._abandon_stuck_threads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Every step's thread is named so: what a process exiting past them reports.
THREAD_PREFIX = "aegis-start-"


async def run_step(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on a new thread; cancelling the caller leaves the thread running."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the caller was cancelled: nobody waits for the result
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = function(*args)
        except BaseException as error:
            outcome: tuple[T | None, BaseException | None] = (None, error)
        else:
            outcome = (result, None)
        # The loop is gone when the process stopped while the step ran: drop the outcome.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    name = getattr(function, "__name__", "step").strip("_")
    threading.Thread(target=target, name=f"{THREAD_PREFIX}{name}").start()
    return await future
