"""The channel between a front end and an engine, both ends in one event loop: a real Unix
socket, a real memfd arena and a real model behind the engine's batcher."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.batching import BatchResult
from appliance.channel import Arena, EngineLinks, EngineServer
from appliance.channel.frontend import EngineModel
from appliance.config import parse_config
from appliance.errors import DeadlineExceeded, InvalidInput, ModelNotReady
from appliance.lifecycle.models import ModelLifecycle
from appliance.lifecycle.notify import SystemdNotifier
from appliance.metrics import Metrics
from appliance.repository import LocalModel, ModelRepository
from tests.support.config import model_table
from tests.support.models import Mlp, mlp_pt2

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

WIDE = 262_144  # one row of FP32 is 1 MiB


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_pt2(tmp_path_factory.mktemp("wide") / "wide.pt2", inputs=WIDE, seed=3)


def expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = Mlp(WIDE, 3, seed=3)(torch.from_numpy(x)).numpy()
    return result


Body = Callable[[EngineModel, EngineLinks, ModelLifecycle, ModelRepository], Awaitable[None]]


def through_the_channel(model: Path, tmp_path: Path, arena_bytes: int, body: Body) -> None:
    """An engine serving `model` and a front end linked to it; `body` gets the front end's
    model, its links, the engine's lifecycle and its repository."""
    text = f'[storage]\ncache_dir = "{tmp_path / "cache"}"\n\n' + model_table(
        "wide", model, "max_batch_size = 4\nmax_queue_delay_ms = 20"
    )
    config = parse_config(tomllib.loads(text))

    async def run() -> None:
        engine_repository = ModelRepository()
        lifecycle = ModelLifecycle(config, engine_repository, Metrics(), SystemdNotifier(None))
        server = EngineServer(engine_repository, str(tmp_path / "engine.sock"))
        await server.start()
        links = EngineLinks(
            (server.path,), ModelRepository(), Metrics(), Arena(arena_bytes, "test-arena"), 0
        )
        try:
            await lifecycle.start()
            await asyncio.wait_for(links.start(), 30)
            served = links.repository.get("wide")
            assert isinstance(served, EngineModel)
            await body(served, links, lifecycle, engine_repository)
        finally:
            await links.close()
            await server.close()
            await lifecycle.close()
            links.arena.close()

    asyncio.run(run())


async def infer(model: EngineModel, x: np.ndarray) -> np.ndarray:
    deadline = asyncio.get_running_loop().time() + 30
    result = await model.infer({"x": x}, x.shape[0], deadline)
    return result.outputs["output__0"]


def test_a_1_mib_input_crosses_in_shared_memory_not_in_the_control_message(
    wide_model: Path, tmp_path: Path
) -> None:
    async def body(model: EngineModel, links: EngineLinks, *_: object) -> None:
        link = links.links[0]
        assert link.protocol is not None
        x = np.random.default_rng(1).standard_normal((1, WIDE), dtype=np.float32)
        sent_before = link.protocol.sent_bytes
        outputs = await infer(model, x)
        np.testing.assert_allclose(outputs, expected(x), rtol=1e-4, atol=1e-4)
        control = link.protocol.sent_bytes - sent_before
        assert control < 1024, f"{control} bytes of control message for a 1 MiB tensor"
        assert links.arena.in_use == 0  # freed with the answer

    through_the_channel(wide_model, tmp_path, 16 << 20, body)


def test_an_input_the_arena_cannot_hold_travels_in_the_message_and_is_answered_alike(
    wide_model: Path, tmp_path: Path
) -> None:
    async def body(model: EngineModel, links: EngineLinks, *_: object) -> None:
        link = links.links[0]
        assert link.protocol is not None
        x = np.random.default_rng(2).standard_normal((2, WIDE), dtype=np.float32)
        sent_before = link.protocol.sent_bytes
        outputs = await infer(model, x)
        np.testing.assert_allclose(outputs, expected(x), rtol=1e-4, atol=1e-4)
        assert link.protocol.sent_bytes - sent_before > x.nbytes

    through_the_channel(wide_model, tmp_path, 1 << 20, body)  # smaller than the 2 MiB input


def test_concurrent_requests_are_batched_by_the_engine_and_each_gets_its_own_rows(
    wide_model: Path, tmp_path: Path
) -> None:
    async def body(model: EngineModel, links: EngineLinks, *_: object) -> None:
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal((1, WIDE), dtype=np.float32) for _ in range(8)]
        deadline = asyncio.get_running_loop().time() + 30
        results = await asyncio.gather(*(model.infer({"x": x}, 1, deadline) for x in xs))
        for x, result in zip(xs, results, strict=True):
            np.testing.assert_allclose(
                result.outputs["output__0"], expected(x), rtol=1e-4, atol=1e-4
            )
        assert max(result.batch_size for result in results) > 1
        assert links.arena.in_use == 0

    through_the_channel(wide_model, tmp_path, 16 << 20, body)


def test_the_engines_errors_arrive_as_the_same_core_errors(
    wide_model: Path, tmp_path: Path
) -> None:
    async def body(
        model: EngineModel, links: EngineLinks, lifecycle: ModelLifecycle, _: ModelRepository
    ) -> None:
        x = np.zeros((1, WIDE), dtype=np.float32)
        # The front end's view says 1 row; an engine that re-checks (another artifact) refuses.
        link = links.links[0]
        model.fingerprint = "another artifact"
        with pytest.raises(InvalidInput, match="input 'x'"):
            await infer(model, np.zeros((1, 5), dtype=np.float32))
        await lifecycle.unload("wide")
        with pytest.raises((ModelNotReady, InvalidInput)) as raised:
            await infer(model, x)
        assert "wide" in str(raised.value)
        assert not link.outstanding.get(("wide", "1"))

    through_the_channel(wide_model, tmp_path, 16 << 20, body)


def test_the_arena_never_hands_out_overlapping_regions() -> None:
    arena = Arena(4096, "test-arena")
    live: dict[int, tuple[int, int]] = {}
    rng = random.Random(1)
    allocated = 0
    offset: int | None
    try:
        for step in range(20_000):
            if live and (rng.random() < 0.5 or len(live) > 20):
                offset, _ = live.pop(rng.choice(list(live)))
                arena.free(offset)
                continue
            size = rng.randint(1, 700)
            offset = arena.allocate(size)
            if offset is None:
                continue
            allocated += 1
            end = offset + -(-size // 64) * 64
            assert end <= arena.size
            for other, other_end in live.values():
                assert end <= other or other_end <= offset, (offset, end, other, other_end)
            live[step] = (offset, end)
        assert allocated > 5_000
        for offset, _ in live.values():
            arena.free(offset)
        assert arena.in_use == 0
        assert arena.allocate(4096) == 0  # all of it is free again
    finally:
        arena.close()


def engine_side(engine: ModelRepository) -> LocalModel:
    model = engine.get("wide")
    assert isinstance(model, LocalModel)
    return model


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def start_a_held_batch(
    model: EngineModel, links: EngineLinks, engine: ModelRepository, x: np.ndarray, timeout_s: float
) -> tuple[threading.Event, asyncio.Future[BatchResult]]:
    """Send `x` and return once its batch has started on the engine, whose one model thread is
    held until the event is set: the batch has taken the request but not read its inputs."""
    hold = threading.Event()
    engine_side(engine).primary.executor.submit(hold.wait, 30)
    deadline = asyncio.get_running_loop().time() + timeout_s
    request = asyncio.ensure_future(model.infer({"x": x}, 1, deadline))
    waiting = links.links[0]._waiting
    await until(lambda: any(each.started for each in waiting.values()), "the batch to start")
    return hold, request


def test_a_reply_waits_until_the_running_batch_no_longer_reads_the_requests_arena_space(
    wide_model: Path, tmp_path: Path
) -> None:
    async def body(
        model: EngineModel, links: EngineLinks, _: ModelLifecycle, engine: ModelRepository
    ) -> None:
        x = np.ones((1, WIDE), dtype=np.float32)
        hold, request = await start_a_held_batch(model, links, engine, x, 0.2)
        await asyncio.sleep(0.5)
        # Its deadline has passed; the region must stay taken while the batch may read it.
        assert not request.done()
        assert links.arena.in_use > 0
        hold.set()
        with pytest.raises(DeadlineExceeded, match="while its batch was running"):
            await request
        assert links.arena.in_use == 0

    through_the_channel(wide_model, tmp_path, 16 << 20, body)


def test_a_request_whose_client_leaves_is_withdrawn_from_the_engines_queue(
    wide_model: Path, tmp_path: Path
) -> None:
    async def body(
        model: EngineModel, links: EngineLinks, _: ModelLifecycle, engine: ModelRepository
    ) -> None:
        batcher = engine_side(engine).primary.batcher
        first = np.full((1, WIDE), 0.5, dtype=np.float32)
        hold, running = await start_a_held_batch(model, links, engine, first, 30)
        deadline = asyncio.get_running_loop().time() + 30
        leaving = asyncio.ensure_future(model.infer({"x": np.zeros_like(first)}, 1, deadline))
        await until(lambda: batcher.queue_depth == 1, "the second request to queue")
        held = links.arena.in_use
        leaving.cancel()
        await until(lambda: batcher.queue_depth == 0, "the engine to withdraw it")
        await until(lambda: links.arena.in_use < held, "its arena space to be freed")
        hold.set()
        result = await running
        np.testing.assert_allclose(
            result.outputs["output__0"], expected(first), rtol=1e-4, atol=1e-4
        )
        assert result.batch_size == 1  # the withdrawn request never ran beside it
        assert links.arena.in_use == 0

    through_the_channel(wide_model, tmp_path, 16 << 20, body)
