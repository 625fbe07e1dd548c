"""Completion estimates: per-bucket batch times and what a batcher predicts for a new request."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from appliance.batching import BatchingPolicy, BatchObserver, DynamicBatcher
from appliance.batching.estimate import BatchTimes


def test_batch_times_average_each_bucket_and_scale_unmeasured_ones_by_rows() -> None:
    times = BatchTimes()
    assert times.seconds(8) is None
    times.seed({8: 0.010})
    assert times.seconds(8) == 0.010
    # An unmeasured bucket: the nearest measured one, scaled up by rows, never down.
    assert times.seconds(16) == pytest.approx(0.020)
    assert times.seconds(1) == 0.010
    # Serving moves the average; a later seed does not undo it.
    assert times.observe(8, 0.020) == pytest.approx(0.012)
    times.seed({8: 0.5})
    assert times.seconds(8) == pytest.approx(0.012)


class Gate:
    """x -> x + 1, holding each batch until released: a model busy for as long as a test needs."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.release.wait(10)
        return {"y": batch["x"] + 1}


async def _until(condition: object, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.002)


def test_a_batcher_predicts_the_batches_ahead_of_a_new_request() -> None:
    async def scenario() -> None:
        gate = Gate()
        averages: dict[int, float] = {}
        observer = BatchObserver(on_average=averages.__setitem__)
        policy = BatchingPolicy(
            max_batch_size=8,
            buckets=(1, 2, 4, 8),
            max_queue_delay_s=0.001,
            max_concurrency=1,
            max_queue_size=64,
        )
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(gate, policy, executor, observer)
            assert batcher.estimate_s(1) is None  # nothing measured yet
            batcher.seed_times({1: 0.001, 8: 0.004})
            assert averages == {1: 0.001, 8: 0.004}  # warmup's figures reach the metrics
            batcher.start()
            assert not batcher.would_wait
            # Idle: one batch of one row.
            assert batcher.estimate_s(1) == pytest.approx(0.001)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            first = asyncio.ensure_future(
                batcher.submit({"x": np.zeros((8, 1), np.float32)}, 8, deadline)
            )
            await _until(gate.entered.is_set)
            queued = [
                asyncio.ensure_future(
                    batcher.submit({"x": np.zeros((4, 1), np.float32)}, 4, deadline)
                )
                for _ in range(3)
            ]
            await _until(lambda: batcher.queue_depth == 3)
            assert batcher.would_wait
            # 12 rows queued + 1: a full batch of 8 (4 ms), then 5 rows in a bucket of 8
            # (4 ms), after what is left of the running batch (at most its 4 ms).
            estimate = batcher.estimate_s(1)
            assert estimate is not None and 0.008 <= estimate <= 0.012, estimate
            gate.release.set()
            await asyncio.gather(first, *queued)
            assert batcher.queue_depth == 0 and not batcher.would_wait
            await batcher.close()

    asyncio.run(scenario())
