"""Interpreter-wide settings the appliance serves under: set here, by the lifecycle, only.

Components (the batcher, the runtimes) run the same in a test or a notebook; what tunes the
whole process for serving is decided once, by the process that serves.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from typing import NoReturn

from appliance.logs import finish_output, flush_after_each_turn

# The longest a worker thread waits for the GIL while the event loop holds it (CPython: 5 ms).
SWITCH_INTERVAL_S = 0.001
# Allocations between two collections of the youngest generation (CPython: 700).
YOUNG_GENERATION_THRESHOLD = 10_000


def tune_for_serving() -> None:
    """The settings below, for a process that serves requests; called on its event loop."""
    shorten_switch_interval()
    collect_young_objects_less_often()
    # A log line per request, flushed once per turn of the loop rather than once per line.
    flush_after_each_turn(asyncio.get_running_loop())


def shorten_switch_interval() -> None:
    """Let batch worker threads take the GIL back from a busy event loop within 1 ms.

    A worker needs the GIL back after each torch op while the event loop, busy with HTTP, holds
    it; by default it waits up to 5 ms per handoff. 1 ms cut batch turnaround and raised
    throughput by about a fifth on the tiny model at c=64 (bench/RESULTS.md).
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))


def collect_young_objects_less_often() -> None:
    """Collect the youngest generation every 10,000 allocations rather than every 700.

    A request makes a few hundred objects, nearly all gone by its end. Under overload a thousand
    open connections keep many young objects alive across collections, so that they age into the
    older generations and make each collection, and the full ones that follow, walk more: 16x
    overload of the tiny model spent about 12% of its event loop collecting (3% at capacity), and
    the server's CPU per answered request fell from 773-837 us to 558-586 with this threshold
    (bench/RESULTS.md, "Overload and the garbage collector"). The older generations keep their
    thresholds, so cyclic garbage is still freed on the same schedule relative to them.
    """
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_GENERATION_THRESHOLD), middle, oldest)


def freeze_heap() -> None:
    """Move every object alive now (torch's import and the loaded models) out of the cyclic GC.

    The heap holds some 350,000 long-lived objects once torch is loaded; each full collection
    walked all of them and stalled the event loop for tens of milliseconds, which was the p99 at
    c=64 (208 ms before, 32 ms after). Unfreezing and collecting first lets the cyclic garbage of
    a model unloaded since the last load be freed rather than kept for good.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def exit_process(code: int) -> NoReturn:
    """End a serving process that has stopped and closed what it owns, without the interpreter's
    finalization.

    Finalization runs the native runtimes' exit handlers and C++ static destructors while their
    own threads (XLA's compile and dispatch pools, which no Python thread join waits for) may
    still run; a destructor that meets such a thread calls std::terminate, and the process ends
    in SIGABRT ("terminate called without an active exception"), reported of a SIGTERM during a
    jax load. Nothing of the appliance's is left to finalization: the models are closed, the
    listeners and shared memory released, and the log lines are passed on here.
    """
    finish_output()
    os._exit(code)
