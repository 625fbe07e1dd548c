"""Named dimensions in the batcher: padded to their buckets with each input's pad value, shared
batches across lengths of one bucket, outputs cut back to each request's own length."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.batching import BatchingPolicy, DynamicBatcher, NamedDims
from appliance.batching.padding import assemble
from appliance.errors import InvalidInput
from appliance.tensors import Signature, TensorSpec

SIGNATURE = Signature(
    inputs=(
        TensorSpec("ids", "INT64", (-1, "seq"), pad_value=7),
        TensorSpec("mask", "BOOL", (-1, "seq")),
        TensorSpec("scale", "FP32", (-1, 1)),
    ),
    outputs=(
        TensorSpec("states", "FP32", (-1, "seq", 2)),
        TensorSpec("pooled", "FP32", (-1,)),
    ),
)
SEQ_BUCKETS = (4, 8, 16)


class SeqModel:
    """states[b, t] = (ids * scale, mask); pooled = the masked sum of ids * scale. Records the
    padded batches it saw."""

    def __init__(self) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.batches.append(batch)
        scaled = batch["ids"].astype(np.float32) * batch["scale"]
        states = np.stack([scaled, batch["mask"].astype(np.float32)], axis=-1)
        return {"states": states, "pooled": (scaled * batch["mask"]).sum(axis=1)}


def policy(max_concurrency: int = 1) -> BatchingPolicy:
    return BatchingPolicy(
        max_batch_size=8,
        buckets=(1, 2, 4, 8),
        max_queue_delay_s=0.05,
        max_concurrency=max_concurrency,
        max_queue_size=64,
        dims=NamedDims.of(SIGNATURE, {"seq": SEQ_BUCKETS}),
    )


def request(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "ids": rng.integers(0, 100, (rows, length)),
        "mask": np.ones((rows, length), dtype=np.bool_),
        "scale": rng.standard_normal((rows, 1)).astype(np.float32),
    }


def expected(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return SeqModel()(inputs)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, SEQ_BUCKETS[-1])), min_size=1, max_size=16)
)
def test_each_caller_gets_its_own_rows_at_its_own_length(shapes: list[tuple[int, int]]) -> None:
    model = SeqModel()

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = DynamicBatcher(model, policy(max_concurrency=2), executor)
            batcher.start()
            deadline = asyncio.get_running_loop().time() + 10
            requests = [request(rows, length, seed) for seed, (rows, length) in enumerate(shapes)]
            results = await asyncio.gather(
                *(batcher.submit(inputs, len(inputs["ids"]), deadline) for inputs in requests)
            )
            for inputs, result in zip(requests, results, strict=True):
                want = expected(inputs)
                np.testing.assert_allclose(result.outputs["states"], want["states"], rtol=1e-6)
                np.testing.assert_allclose(result.outputs["pooled"], want["pooled"], rtol=1e-5)
            await batcher.close()

    asyncio.run(scenario())
    for batch in model.batches:
        assert batch["ids"].shape[0] in (1, 2, 4, 8)
        assert batch["ids"].shape[1] in SEQ_BUCKETS
        assert batch["mask"].shape == batch["ids"].shape


def test_lengths_of_one_bucket_share_a_batch_padded_with_the_pad_values() -> None:
    model = SeqModel()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(model, policy(), executor)
            batcher.start()
            deadline = asyncio.get_running_loop().time() + 10
            # 5 and 7 both pad to 8; 3 pads to 4, so it runs in a batch of its own.
            short, longer, other = request(1, 5, 1), request(2, 7, 2), request(1, 3, 3)
            results = await asyncio.gather(
                *(batcher.submit(r, len(r["ids"]), deadline) for r in (short, longer, other))
            )
            assert [result.batch_size for result in results] == [3, 3, 1]
            assert results[0].outputs["states"].shape == (1, 5, 2)
            assert results[1].outputs["states"].shape == (2, 7, 2)
            assert results[2].outputs["states"].shape == (1, 3, 2)
            await batcher.close()

    asyncio.run(scenario())
    shared = next(batch for batch in model.batches if batch["ids"].shape == (4, 8))
    # Row 0 is the 5-long request: ids padded with 7, the mask with false (its default 0).
    assert (shared["ids"][0, 5:] == 7).all() and not shared["mask"][0, 5:].any()
    # Row 3 is a padding row: every element holds the pad value.
    assert (shared["ids"][3] == 7).all() and not shared["mask"][3].any()
    assert (shared["scale"][3] == 0).all()


def test_a_length_past_the_largest_bucket_is_refused() -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher(SeqModel(), policy(), executor)
            batcher.start()
            inputs = request(1, SEQ_BUCKETS[-1] + 1, 1)
            with pytest.raises(InvalidInput, match=r"seq = 17 is past the largest bucket \(16\)"):
                await batcher.submit(inputs, 1, asyncio.get_running_loop().time() + 10)
            await batcher.close()

    asyncio.run(scenario())


def test_a_bf16_pad_value_pads_with_its_bit_pattern() -> None:
    """BF16 travels as its 16-bit pattern: a pad of 1.0 must be 0x3F80, not the integer 1."""
    signature = Signature(
        inputs=(TensorSpec("x", "BF16", (-1, "seq"), pad_value=1.0),),
        outputs=(TensorSpec("y", "BF16", (-1, "seq")),),
    )
    dims = NamedDims.of(signature, {"seq": (4, 8)})
    request = {"x": np.full((1, 3), 0x4000, dtype=np.uint16)}  # 2.0
    batch = assemble([request], 2, dims, {"seq": 4})
    assert batch["x"].tolist() == [[0x4000] * 3 + [0x3F80], [0x3F80] * 4]
