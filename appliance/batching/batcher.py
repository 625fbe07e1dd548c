"""The dynamic batcher: one per served model replica.

Requests wait in a bounded FIFO. When one of `max_concurrency` execution slots is free, the batcher
takes the oldest request and gathers more (same inner shapes once padded) until the batch is full or
`max_queue_delay_ms` has passed since that oldest request arrived; a model with nothing running
and nothing else queued runs the request at once, since waiting would only add latency. Requests
that were already queued when the slot freed (a busy model) get their window from that moment,
so the clients just answered can join them instead of forming the next, half-full batch. The batch
is padded to the nearest bucket (static shapes for XLA, fewer distinct shapes everywhere), and so is
each named dimension (`padding`), and run on a worker thread; each caller gets exactly its own rows
back, named output dimensions cut back to its own lengths.

Deadlines are kept by one event-loop timer per batcher, armed at the earliest deadline of the
requests it holds (a timer per request cost more than the rest of its batching), so a request
whose deadline passes fails at that moment, not when a running batch ends; if it had not started
it is dropped and never computed.

A batch that fails is taken apart so that the requests the model cannot take fail alone, however
many there are: it is bisected (both halves rerun, a failing half split again) down to the requests
that fail on their own, and every other request is answered. No guess ends the search early, since
a guess that the model fails on everything would fail good requests beside several bad ones. The
cost is bounded by the tree: a failed batch of n requests is rerun at most 2n - 2 times, and each
level of the tree reruns at most its n requests' rows, so at most ceil(log2 n) batches of rows in
all (a model that fails on every input pays that bound; one culprit costs about 2 log2 n small
runs). Requests whose deadline passes meanwhile drop out of the reruns. Reruns go through the same
padded path, so on XLA they run shapes that warmup compiled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np
import structlog

from appliance.batching.estimate import BatchTimes
from appliance.batching.padding import NamedDims, assemble
from appliance.errors import DeadlineExceeded, InvalidInput, ModelFailed, ModelNotReady, QueueFull

log = structlog.get_logger("aegis.batcher")

Tensors = dict[str, np.ndarray]
RunBatch = Callable[[Tensors], Tensors]


class _State(enum.Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A caller's rows of the batch outputs, with how its request was served."""

    outputs: Tensors
    batch_size: int
    queue_s: float
    compute_s: float
    # Why a CPU replica served it ("unavailable", "overflow", "latency"); None on the model's own.
    fallback: str | None = None
    # The batch's number on its batcher: requests that rode together share it (access lines).
    batch: int = 0


class Progress(Protocol):
    """Told what becomes of one request's inputs: for a caller that must know whether a batch
    ran them, or that lends them from memory it wants back (an engine's front-end arena)."""

    def started(self) -> None:
        """Its batch starts: the model may now see its inputs."""

    def released(self) -> None:
        """The batch that started it has ended, reruns included: its inputs are not read again."""


@dataclass(eq=False, slots=True)
class Queued:
    """A request taken by a batcher: the future of its answer, and its withdrawal while it has
    not started."""

    inputs: Tensors
    rows: int
    shape_key: ShapeKey
    lengths: Mapping[str, int]  # along each named dimension
    padded: Mapping[str, int]  # the buckets of those lengths
    enqueued: float
    future: asyncio.Future[BatchResult]
    progress: Progress | None
    batcher: DynamicBatcher
    fallback: str | None  # the answer's `fallback`: why this (CPU) replica serves it
    deadline: float  # on the event loop's clock
    state: _State = _State.QUEUED

    async def result(self) -> BatchResult:
        """Its answer; cancelling the awaiting task withdraws it if its batch has not started."""
        try:
            return await self.future
        except asyncio.CancelledError:
            self.batcher._withdraw(self)
            raise

    def cancel(self) -> bool:
        """Withdraw it and cancel its future, unless its batch has started (the model would
        not stop) or it has its answer; whether it was withdrawn."""
        if self.state is not _State.QUEUED:
            return False
        self.batcher._withdraw(self)
        self.future.cancel()
        return True


@dataclass(slots=True)
class BatchObserver:
    """Where the batcher reports what it did; the default discards everything."""

    on_batch: Callable[[int, int, float], None] = lambda rows, bucket, compute_s: None
    # The seconds each request of a batch waited, once per batch as it starts.
    on_dequeue: Callable[[list[float]], None] = lambda queue_s: None
    # The queue's depth, once per event-loop turn in which it changed.
    on_depth: Callable[[int], None] = lambda depth: None
    # (requests that failed on their own, requests answered by reruns, requests failed because
    # the model failed on every part tried), once per failed batch.
    on_failure: Callable[[int, int], None] = lambda culprits, rescued: None
    # A bucket's moving average of batch time moved (seeded by warmup, then every batch).
    on_average: Callable[[int, float], None] = lambda bucket, seconds: None
    # A request queued with a `fallback` reason was answered.
    on_fallback: Callable[[str], None] = lambda reason: None


@dataclass(slots=True)
class BatchingPolicy:
    max_batch_size: int
    buckets: tuple[int, ...]
    max_queue_delay_s: float
    max_concurrency: int
    max_queue_size: int
    dims: NamedDims = field(default_factory=NamedDims)

    def bucket_for(self, rows: int) -> int:
        for bucket in self.buckets:
            if bucket >= rows:
                return bucket
        return self.max_batch_size


# The lengths and buckets of every request of a model without named dimensions: nothing to pad.
_NO_DIMS: Mapping[str, int] = MappingProxyType({})

ShapeKey = tuple[tuple[str, tuple[int, ...], np.dtype], ...]


def _shape_key(inputs: Tensors, dims: NamedDims, padded: Mapping[str, int]) -> ShapeKey:
    """What requests must share to be batched: each input's inner shape once padded, and dtype.

    Built per request on the engine's hot path, hence the plain loops and the dtype objects
    (`dtype.str` makes a new string each time; a loop costs half of a generator here)."""
    key = []
    if not dims.inputs:  # no named dimension: the inner shape is the shape less its rows
        for name, array in inputs.items():
            key.append((name, array.shape[1:], array.dtype))
    else:
        for name, array in inputs.items():
            key.append((name, dims.inner_shape(name, array.shape, padded), array.dtype))
    return tuple(key)


class DynamicBatcher:
    """Queues requests for one model replica and runs them in padded batches."""

    def __init__(
        self,
        run_batch: RunBatch,
        policy: BatchingPolicy,
        executor: Executor,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._policy = policy
        self._executor = executor
        self._observer = observer or BatchObserver()
        self._queue: deque[Queued] = deque()
        self._waiting = 0
        self._queued_rows = 0
        self.times = BatchTimes()
        # Batches on the model now: (loop time started, bucket), for completion estimates.
        self._on_model: dict[int, tuple[float, int]] = {}
        self._running: set[asyncio.Task[None]] = set()
        # Counted apart from `_running`: a finished task leaves that set a loop turn late.
        self._batches_running = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.max_concurrency)
        self._slot_freed_at = -math.inf  # loop time a batch last gave its slot back
        self._last_answered = 0  # requests that batch answered: clients that may send again
        self._closed = False
        self._loop_task: asyncio.Task[None] | None = None
        # Made by `drain`, set once nothing is queued or running.
        self._idle: asyncio.Event | None = None
        self._batch_numbers = itertools.count(1)
        self._depth_report_scheduled = False
        # The requests whose deadline may still pass (queued or running), and the timer armed at
        # the earliest of those deadlines.
        self._timed: set[Queued] = set()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def has_room(self) -> bool:
        return self._waiting < self._policy.max_queue_size

    @property
    def would_wait(self) -> bool:
        """Whether a request queued now waits behind others (a queue, or every slot busy)."""
        return self._waiting > 0 or self._batches_running >= self._policy.max_concurrency

    def seed_times(self, measured: dict[int, float]) -> None:
        """Batch times measured before serving (warmup), until serving measures its own."""
        self.times.seed(measured)
        for bucket, seconds in self.times.snapshot().items():
            self._observer.on_average(bucket, seconds)

    def estimate_s(self, rows: int) -> float | None:
        """Predicted seconds until a request of `rows` rows, queued now, is answered.

        What remains of the batches on the model, then the queued rows and these in full batches
        and one last partial one, each at its bucket's measured time, one after another (the
        device runs one batch at a time; overlapping host work only makes this pessimistic).
        None until batch times have been measured.
        """
        policy = self._policy
        full = policy.max_batch_size
        full_batches, rest = divmod(self._queued_rows + rows, full)
        full_s = self.times.seconds(full)
        rest_s = self.times.seconds(policy.bucket_for(rest)) if rest else 0.0
        if full_s is None or rest_s is None:
            return None
        now = asyncio.get_running_loop().time()
        running_s = 0.0
        for started, bucket in self._on_model.values():
            expected = self.times.seconds(bucket) or 0.0
            running_s += max(expected - (now - started), 0.0)
        return running_s + full_batches * full_s + rest_s

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._batch_loop(), name="aegis-batcher"
            )
            self._loop_task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A batch loop that died (a bug of ours) would leave every request to its deadline:
        refuse from now on, fail what waits, and say so."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher_stopped", exc_info=task.exception())
        self._closed = True
        for pending in self._queue:
            if pending.state is _State.QUEUED:
                self._withdraw(pending)
                if not pending.future.done():
                    pending.future.set_exception(ModelFailed("internal error: the batcher stopped"))
        self._queue.clear()

    async def submit(
        self, inputs: Tensors, rows: int, deadline: float, progress: Progress | None = None
    ) -> BatchResult:
        """Queue `inputs` (`rows` rows each) and wait for their outputs until `deadline`.

        `deadline` is on the event loop's clock. Cancelling the awaiting task (a client that went
        away) withdraws the request if its batch has not started. `progress` hears when its batch
        starts and ends; a request that never starts is never told.
        """
        return await self.enqueue(inputs, rows, deadline, progress).result()

    def enqueue(
        self,
        inputs: Tensors,
        rows: int,
        deadline: float,
        progress: Progress | None = None,
        fallback: str | None = None,
    ) -> Queued:
        """`submit` without the wait: the queued request, whose future holds its answer. For a
        caller that takes many requests in one turn (an engine reading a frame of them), where a
        task per request would cost more than the batching does."""
        if self._closed:
            raise ModelNotReady("the model is being unloaded")
        if self._waiting >= self._policy.max_queue_size:
            raise QueueFull(f"queue full ({self._policy.max_queue_size} requests waiting)")
        dims = self._policy.dims
        lengths = padded = _NO_DIMS
        if dims.inputs:
            lengths = dims.lengths(inputs)
            try:
                padded = dims.padded(lengths)
            except ValueError as error:
                raise InvalidInput(str(error)) from None
        loop = asyncio.get_running_loop()
        key = _shape_key(inputs, dims, padded)
        queued = Queued(
            inputs,
            rows,
            key,
            lengths,
            padded,
            loop.time(),
            loop.create_future(),
            progress,
            self,
            fallback,
            deadline,
        )
        self._timed.add(queued)
        if deadline < self._deadline_at:
            self._arm_deadline_timer(deadline)
        self._queue.append(queued)
        self._queued_rows += rows
        self._set_waiting(self._waiting + 1)
        self._wakeup.set()
        return queued

    def _set_waiting(self, value: int) -> None:
        self._waiting = value
        if not self._depth_report_scheduled:
            # Once per loop turn, not per request: a turn that takes in a frame of requests
            # would otherwise write the gauge for each (a locked file write in an engine).
            self._depth_report_scheduled = True
            asyncio.get_running_loop().call_soon(self._report_depth)
        if self._idle is not None:
            self._note_idle()

    def _report_depth(self) -> None:
        self._depth_report_scheduled = False
        self._observer.on_depth(self._waiting)

    def _note_idle(self) -> None:
        if not self._waiting and not self._batches_running:
            assert self._idle is not None
            self._idle.set()

    def _withdraw(self, pending: Queued) -> None:
        if pending.state is _State.QUEUED:
            pending.state = _State.DONE
            self._queued_rows -= pending.rows
            self._set_waiting(self._waiting - 1)
        self._timed.discard(pending)

    def _arm_deadline_timer(self, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = asyncio.get_running_loop().call_at(when, self._deadlines_due)

    def _deadlines_due(self) -> None:
        """Fail the requests whose deadline has passed; arm the timer for the next deadline."""
        self._deadline_timer = None
        self._deadline_at = math.inf
        now = asyncio.get_running_loop().time()
        for pending in [pending for pending in self._timed if pending.deadline <= now]:
            self._expire(pending)
        if self._timed:
            self._arm_deadline_timer(min(pending.deadline for pending in self._timed))

    def _expire(self, pending: Queued) -> None:
        started = pending.state is _State.RUNNING
        self._withdraw(pending)
        if not pending.future.done():
            when = "while its batch was running" if started else "before its batch started"
            pending.future.set_exception(DeadlineExceeded(f"deadline passed {when}"))

    async def _batch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._collect()
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(functools.partial(self._batch_ended, batch))

    def _batch_ended(self, batch: list[Queued], task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher_batch_failed", exc_info=task.exception())
        self._fail(batch, ModelFailed("internal error while running the batch"))

    def _pop_live(self) -> Queued | None:
        while self._queue and self._queue[0].state is not _State.QUEUED:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    async def _collect(self) -> list[Queued]:
        """Wait for the oldest request, then gather a batch for it. Holds an execution slot."""
        loop = asyncio.get_running_loop()
        head = self._pop_live()
        while head is None:
            self._wakeup.clear()
            await self._wakeup.wait()
            head = self._pop_live()
        # A request queued before the last slot freed waited for the model, not for partners;
        # the clients of the batch that just ended are being answered and, closed-loop, send
        # again within a moment. Opening its window now, until those many more have come, gathers
        # both groups into one batch, where dispatching at once would leave a busy model
        # alternating between two half batches.
        backlog = head.enqueued < self._slot_freed_at
        expected = self._waiting + self._last_answered if backlog else 0
        policy = self._policy
        window_end = (loop.time() if backlog else head.enqueued) + policy.max_queue_delay_s
        batch: list[Queued] = []
        rows = 0
        while True:
            candidate = self._pop_live()
            while candidate is not None and candidate.shape_key == head.shape_key:
                if rows + candidate.rows > policy.max_batch_size:
                    break
                self._queue.popleft()
                batch.append(candidate)
                rows += candidate.rows
                candidate = self._pop_live()
            if rows >= policy.max_batch_size or candidate is not None:
                break
            if backlog and len(batch) >= expected:
                break
            if not backlog and not self._batches_running and self._waiting == len(batch):
                # Nothing else is queued or running: an idle model gains no partner by waiting
                # (a closed-loop client sends its next request only after this answer), so run.
                break
            remaining = window_end - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            # A loop timer that sets the event, not asyncio.wait_for: wait_for wraps the wait in
            # a new task and cancels it on every timeout, a cost paid per batch.
            timer = loop.call_at(window_end, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()
        return batch

    async def _execute(self, batch: list[Queued]) -> None:
        self._batches_running += 1
        answered = 0
        try:
            live = [pending for pending in batch if pending.state is _State.QUEUED]
            if not live:
                return
            answered = len(live)
            started = asyncio.get_running_loop().time()
            for pending in live:
                pending.state = _State.RUNNING
                self._queued_rows -= pending.rows
                if pending.progress is not None:
                    pending.progress.started()
            self._observer.on_dequeue([started - pending.enqueued for pending in live])
            self._set_waiting(self._waiting - len(live))
            try:
                error = await self._attempt(live, started)
                if error is not None:
                    await self._isolate(live, error, started)
            finally:
                for pending in live:
                    if pending.progress is not None:
                        pending.progress.released()
        finally:
            self._batches_running -= 1
            self._slot_freed_at = asyncio.get_running_loop().time()
            self._last_answered = answered
            self._slots.release()
            if self._idle is not None:
                self._note_idle()

    async def _attempt(self, part: list[Queued], started: float) -> Exception | None:
        """Run `part` as one padded batch and answer it; the model's exception if it failed.

        Requests whose deadline passed meanwhile are left out (they have their answer).
        """
        live = [pending for pending in part if not pending.future.done()]
        if not live:
            return None
        rows = sum(pending.rows for pending in live)
        batch = next(self._batch_numbers)
        bucket = self._policy.bucket_for(rows)
        parts = [pending.inputs for pending in live]
        padded = live[0].padded  # the same for all: they share a shape key
        loop = asyncio.get_running_loop()
        token = id(live)
        self._on_model[token] = (loop.time(), bucket)
        try:
            outputs, compute_s = await loop.run_in_executor(
                self._executor, self._run_padded, parts, bucket, padded
            )
        except Exception as error:
            return error
        finally:
            del self._on_model[token]
        self._observer.on_average(bucket, self.times.observe(bucket, compute_s))
        self._observer.on_batch(rows, bucket, compute_s)
        offset = 0
        for pending in live:
            self._timed.discard(pending)
            end = offset + pending.rows
            if not pending.future.done():
                mine = self._policy.dims.slice_outputs(outputs, offset, end, pending.lengths)
                queue_s = started - pending.enqueued
                pending.future.set_result(
                    BatchResult(mine, rows, queue_s, compute_s, pending.fallback, batch)
                )
                if pending.fallback is not None:
                    self._observer.on_fallback(pending.fallback)
            pending.state = _State.DONE
            offset = end
        return None

    async def _isolate(self, live: list[Queued], error: Exception, started: float) -> None:
        """Answer every request of a failed batch that the model can take; fail the others."""
        culprits = await self._bisect(live, error, started)
        self._observer.on_failure(culprits, len(live) - culprits)

    async def _bisect(self, part: list[Queued], error: Exception, started: float) -> int:
        """`part` failed with `error`: rerun its halves, split the failing ones; the culprits."""
        if len(part) == 1:
            self._fail(part, _own_failure(part[0], error))
            return 1
        middle = len(part) // 2
        culprits = 0
        for half in (part[:middle], part[middle:]):
            half_error = await self._attempt(half, started)
            if half_error is not None:
                culprits += await self._bisect(half, half_error, started)
        return culprits

    def _run_padded(
        self, parts: list[Tensors], bucket: int, padded: Mapping[str, int]
    ) -> tuple[Tensors, float]:
        """Worker thread: assemble, run and time one batch."""
        batch = assemble(parts, bucket, self._policy.dims, padded)
        started = time.perf_counter()
        outputs = self._run_batch(batch)
        compute_s = time.perf_counter() - started
        for name, array in outputs.items():
            if array.shape[:1] != (bucket,):
                raise ValueError(
                    f"output {name!r} has {array.shape[:1]} rows for a batch of {bucket}"
                )
        return outputs, compute_s

    def _fail(self, live: list[Queued], error: Exception) -> None:
        for pending in live:
            self._timed.discard(pending)
            pending.state = _State.DONE
            if not pending.future.done():
                pending.future.set_exception(error)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests, let queued and running ones finish (up to `timeout_s`), stop."""
        self._closed = True
        self._idle = asyncio.Event()
        self._note_idle()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        await self.close()

    async def close(self) -> None:
        """Stop now: requests still waiting fail with ModelNotReady."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        leftover = [pending for pending in self._queue if pending.state is _State.QUEUED]
        self._queue.clear()
        for pending in leftover:
            self._withdraw(pending)
            if not pending.future.done():
                pending.future.set_exception(ModelNotReady("the model was unloaded"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._deadline_timer is not None:  # every request has its answer now
            self._deadline_timer.cancel()
            self._deadline_timer = None


def _own_failure(pending: Queued, error: Exception) -> ModelFailed:
    """The error of a request that the model fails on by itself, naming its inputs."""
    names = ", ".join(repr(name) for name in pending.inputs)
    return ModelFailed(f"the model failed on this request's input {names}: {error}")
