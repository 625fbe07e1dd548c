"""The dynamic batcher: own rows back, padding to buckets, bounded queue, deadlines, withdrawal."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.batching import BatchingPolicy, BatchObserver, DynamicBatcher
from appliance.errors import DeadlineExceeded, ModelFailed, QueueFull


def policy(**overrides: object) -> BatchingPolicy:
    values = dict(
        max_batch_size=8,
        buckets=(1, 2, 4, 8),
        max_queue_delay_s=0.005,
        max_concurrency=1,
        max_queue_size=64,
    )
    values.update(overrides)
    return BatchingPolicy(**values)  # type: ignore[arg-type]


class Recorder:
    """A real batch function (x -> x * 10) that records the batch shapes it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.shapes: list[int] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.release.wait(10)
        time.sleep(self.delay_s)
        self.shapes.append(batch["x"].shape[0])
        return {"y": batch["x"] * 10}


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=40))
def test_every_caller_gets_exactly_its_own_rows(sizes: list[int]) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = DynamicBatcher(recorder, policy(max_concurrency=2), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            requests = []
            start = 0
            for size in sizes:
                rows = np.arange(start, start + size, dtype=np.float32).reshape(size, 1)
                requests.append(rows)
                start += size
            results = await asyncio.gather(
                *(batcher.submit({"x": rows}, len(rows), loop.time() + 10) for rows in requests)
            )
            for rows, result in zip(requests, results, strict=True):
                np.testing.assert_array_equal(result.outputs["y"], rows * 10)
            await batcher.close()

    run(scenario())
    assert all(shape in (1, 2, 4, 8) for shape in recorder.shapes)


def test_concurrent_requests_share_a_batch_padded_to_a_bucket() -> None:
    recorder = Recorder()
    seen: list[tuple[int, int]] = []
    observer = BatchObserver(on_batch=lambda rows, bucket, _s: seen.append((rows, bucket)))

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_queue_delay_s=0.05), executor, observer)
            batcher.start()
            loop = asyncio.get_running_loop()
            inputs = [np.full((1, 1), i, dtype=np.float32) for i in range(3)]
            results = await asyncio.gather(
                *(batcher.submit({"x": x}, 1, loop.time() + 5) for x in inputs)
            )
            assert [r.batch_size for r in results] == [3, 3, 3]
            await batcher.close()

    run(scenario())
    assert seen == [(3, 4)]
    assert recorder.shapes == [4]


def test_full_queue_refuses_at_once() -> None:
    recorder = Recorder()
    recorder.release.clear()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(
                recorder, policy(max_queue_size=2, max_batch_size=1, buckets=(1,)), executor
            )
            batcher.start()
            loop = asyncio.get_running_loop()
            x = {"x": np.zeros((1, 1), dtype=np.float32)}
            running = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.sleep(0.05)  # the first request is now in the (blocked) model
            queued = [
                asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10)) for _ in range(2)
            ]
            await asyncio.sleep(0)
            started = time.perf_counter()
            with pytest.raises(QueueFull):
                await batcher.submit(x, 1, loop.time() + 10)
            assert time.perf_counter() - started < 0.05
            recorder.release.set()
            await asyncio.gather(running, *queued)
            await batcher.close()

    run(scenario())


def test_deadline_fails_a_waiting_request_while_a_long_batch_runs() -> None:
    recorder = Recorder()
    recorder.release.clear()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_batch_size=1, buckets=(1,)), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            long = asyncio.ensure_future(
                batcher.submit({"x": np.full((1, 1), 1, np.float32)}, 1, loop.time() + 30)
            )
            await asyncio.sleep(0.05)
            started = loop.time()
            with pytest.raises(DeadlineExceeded, match="before its batch started"):
                await batcher.submit({"x": np.full((1, 1), 2, np.float32)}, 1, started + 0.1)
            waited = loop.time() - started
            assert 0.09 <= waited < 0.5, waited
            assert not long.done()
            recorder.release.set()
            await long
            await batcher.close()

    run(scenario())
    # The expired request was never computed: only the long one reached the model.
    assert recorder.shapes == [1]


def test_each_deadline_fires_in_its_own_order_whatever_order_requests_came_in() -> None:
    recorder = Recorder()
    recorder.release.clear()
    failed: list[str] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_batch_size=1, buckets=(1,)), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            x = {"x": np.zeros((1, 1), np.float32)}
            now = loop.time()

            async def request(name: str, after_s: float) -> None:
                try:
                    await batcher.submit(x, 1, now + after_s)
                except DeadlineExceeded as error:
                    failed.append(f"{name}: {error}")

            # "running" takes the model, which the recorder holds until every deadline passed.
            requests = [asyncio.ensure_future(request("running", 0.25))]
            await asyncio.sleep(0)
            for name, after_s in (("third", 0.3), ("first", 0.1), ("second", 0.2)):
                requests.append(asyncio.ensure_future(request(name, after_s)))
            await asyncio.gather(*requests)
            recorder.release.set()
            await batcher.close()

    run(scenario())
    assert failed == [
        "first: deadline passed before its batch started",
        "second: deadline passed before its batch started",
        "running: deadline passed while its batch was running",
        "third: deadline passed before its batch started",
    ]
    assert recorder.shapes == [1]


def test_cancelled_request_is_dropped_before_its_batch_starts() -> None:
    recorder = Recorder()
    recorder.release.clear()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_batch_size=1, buckets=(1,)), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            x = {"x": np.zeros((1, 1), np.float32)}
            first = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.sleep(0.05)
            gone = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.sleep(0.01)
            assert batcher.queue_depth == 1
            gone.cancel()
            await asyncio.sleep(0.01)
            assert batcher.queue_depth == 0
            recorder.release.set()
            await first
            await batcher.close()

    run(scenario())
    assert recorder.shapes == [1]


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    def flaky(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (batch["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": batch["x"] * 10}

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(flaky, policy(max_batch_size=1, buckets=(1,)), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            with pytest.raises(ModelFailed, match="negative input"):
                await batcher.submit({"x": np.full((1, 1), -1, np.float32)}, 1, loop.time() + 5)
            good = await batcher.submit({"x": np.full((1, 1), 2, np.float32)}, 1, loop.time() + 5)
            assert good.outputs["y"].tolist() == [[20.0]]
            await batcher.close()

    run(scenario())


class Picky:
    """x -> x * 10 on a batch without negative values, raising on any that has one; records the
    rows of every batch it ran, padding included."""

    def __init__(self, fail_always: bool = False) -> None:
        self.fail_always = fail_always
        self.runs: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.release.wait(10)
        self.runs.append(batch["x"].shape[0])
        if self.fail_always or (batch["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": batch["x"] * 10}


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition` on the loop until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.002)


async def poisoned_batch(model: Picky, values: list[float]) -> list[Any]:
    """One batch of one-row requests holding `values`, queued behind a request that holds the
    model, so they are batched together; each request's result or exception."""
    with ThreadPoolExecutor(1) as executor:
        observer_calls: list[tuple[int, int]] = []
        observer = BatchObserver(on_failure=lambda *counts: observer_calls.append(counts))
        batcher = DynamicBatcher(model, policy(max_queue_delay_s=0.05), executor, observer)
        batcher.start()
        loop = asyncio.get_running_loop()
        holder = asyncio.ensure_future(
            batcher.submit({"x": np.ones((1, 1), np.float32)}, 1, loop.time() + 10)
        )
        await _until(model.entered.is_set)
        requests = [
            asyncio.ensure_future(
                batcher.submit({"x": np.full((1, 1), value, np.float32)}, 1, loop.time() + 10)
            )
            for value in values
        ]
        await _until(lambda: batcher.queue_depth == len(values))
        gathered = asyncio.gather(*requests, return_exceptions=True)
        model.release.set()
        results = await gathered
        await asyncio.gather(holder, return_exceptions=True)
        await batcher.close()
    return [*results, observer_calls]


def test_a_poisoned_batch_fails_only_its_culprits() -> None:
    model = Picky()
    values = [1.0, 2.0, -3.0, 4.0, 5.0, 6.0, -7.0, 8.0]
    *results, failures = run(poisoned_batch(model, values))
    for value, result in zip(values, results, strict=True):
        if value < 0:
            assert isinstance(result, ModelFailed), result
            assert "this request's input 'x'" in str(result) and "negative input" in str(result)
        else:
            assert result.outputs["y"].tolist() == [[value * 10]], result
    assert failures == [(2, 6)]
    # Reruns are padded to the buckets like any batch: no new shape reaches the model.
    assert set(model.runs) <= {1, 2, 4, 8}, model.runs


@pytest.mark.parametrize(
    "culprits",
    [(0, 5), (0, 1, 2, 3, 4, 5, 6), (0, 7), (1, 2, 3, 4, 5, 6, 7), (0, 2, 4, 6)],
    ids=[
        "first and one more",
        "all but the last",
        "first and last",
        "all but the first",
        "every other",
    ],
)
def test_good_requests_are_answered_beside_any_number_of_culprits(
    culprits: tuple[int, ...],
) -> None:
    model = Picky()
    values = [-1.0 - i if i in culprits else 1.0 + i for i in range(8)]
    *results, failures = run(poisoned_batch(model, values))
    for value, result in zip(values, results, strict=True):
        if value < 0:
            assert isinstance(result, ModelFailed), result
        else:
            assert result.outputs["y"].tolist() == [[value * 10]], result
    assert failures == [(len(culprits), 8 - len(culprits))]


def test_a_model_failing_on_every_input_costs_at_most_the_bisection_tree() -> None:
    model = Picky(fail_always=True)
    *results, failures = run(poisoned_batch(model, [1.0] * 8))
    assert all(isinstance(result, ModelFailed) for result in results), results
    assert "this request's input 'x'" in str(results[-1])
    # The holder's batch, then the batch of 8 and every node of its bisection tree below it:
    # 2 * 8 - 2 reruns, each level of the tree rerunning the 8 rows once (log2 8 = 3 levels).
    assert model.runs == [1, 8, 4, 2, 1, 1, 2, 1, 1, 4, 2, 1, 1, 2, 1, 1], model.runs
    assert sum(model.runs[2:]) == 8 * 3
    assert failures == [(1, 0), (8, 0)]


def test_requests_with_different_inner_shapes_are_not_mixed() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_queue_delay_s=0.02), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            narrow = batcher.submit({"x": np.ones((1, 2), np.float32)}, 1, loop.time() + 5)
            wide = batcher.submit({"x": np.ones((1, 3), np.float32)}, 1, loop.time() + 5)
            a, b = await asyncio.gather(narrow, wide)
            assert a.outputs["y"].shape == (1, 2) and b.outputs["y"].shape == (1, 3)
            await batcher.close()

    run(scenario())
    assert recorder.shapes == [1, 1]


def test_an_idle_model_runs_a_lone_request_without_waiting_for_the_window() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_queue_delay_s=5.0), executor)
            batcher.start()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await batcher.submit({"x": np.ones((1, 1), np.float32)}, 1, started + 10)
            assert loop.time() - started < 1.0
            await batcher.close()

    run(scenario())


def test_requests_arriving_while_a_batch_runs_wait_for_the_window() -> None:
    recorder = Recorder()
    recorder.release.clear()
    sizes: list[int] = []
    observer = BatchObserver(on_batch=lambda rows, _bucket, _s: sizes.append(rows))

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = DynamicBatcher(
                recorder, policy(max_concurrency=2, max_queue_delay_s=0.2), executor, observer
            )
            batcher.start()
            loop = asyncio.get_running_loop()
            x = {"x": np.ones((1, 1), np.float32)}
            first = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.sleep(0.05)  # the first batch is running (blocked in the model)
            later = [asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))]
            await asyncio.sleep(0.05)
            later.append(asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10)))
            recorder.release.set()
            await asyncio.gather(first, *later)
            await batcher.close()

    run(scenario())
    assert sizes == [1, 2]


def test_a_backlog_waits_for_the_clients_of_the_batch_that_just_ended() -> None:
    """Closed-loop clients of a busy model: the request that waited for the slot and the next
    request of the client just answered share a batch, instead of alternating half batches."""
    recorder = Recorder()
    recorder.release.clear()
    sizes: list[int] = []
    observer = BatchObserver(on_batch=lambda rows, _bucket, _s: sizes.append(rows))

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(recorder, policy(max_queue_delay_s=0.5), executor, observer)
            batcher.start()
            loop = asyncio.get_running_loop()
            x = {"x": np.ones((1, 1), np.float32)}
            first = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.sleep(0.05)  # the first batch is running (blocked in the model)
            waiting = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.sleep(0.6)  # longer than the window since it arrived
            recorder.release.set()
            await first
            await asyncio.sleep(0.05)  # the answered client sends its next request
            returning = asyncio.ensure_future(batcher.submit(x, 1, loop.time() + 10))
            await asyncio.gather(waiting, returning)
            await batcher.close()

    run(scenario())
    assert sizes == [1, 2]
