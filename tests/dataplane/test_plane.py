"""The data plane called directly, as every transport calls it: a real repository of real torch
models, no HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.config import parse_config
from appliance.dataplane import DataPlane, InferRequest, RequestedOutput
from appliance.errors import DeadlineExceeded, InvalidInput, ModelNotFound
from appliance.lifecycle.models import ModelLifecycle
from appliance.lifecycle.notify import SystemdNotifier
from appliance.metrics import Metrics
from appliance.repository import LocalModel, ModelRepository
from tests.support.config import model_table, tensor_table
from tests.support.models import Mlp
from tests.support.readiness import RepositoryReadiness

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def models_toml(artifacts: dict[str, Path]) -> str:
    return (
        model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 8")
        + model_table("mixed", artifacts["mixed.pt2"], "max_batch_size = 8")
        + model_table(
            "slow",
            artifacts["slow.pt"],
            "max_batch_size = 1\nwarmup_iters = 0\nmax_concurrency = 1\ntimeout_ms = 60000",
        )
        + tensor_table("inputs", "x", "FP32", [-1, 1])
        + tensor_table("outputs", "y", "FP32", [-1, 1])
    )


def with_plane(
    artifacts: dict[str, Path], tmp_path: Path, body: Callable[[DataPlane], Awaitable[None]]
) -> None:
    """Bring the models up on a fresh event loop, run `body` on their plane, then retire them."""
    text = f'[storage]\ncache_dir = "{tmp_path / "cache"}"\n\n' + models_toml(artifacts)
    config = parse_config(tomllib.loads(text))

    async def run() -> None:
        repository = ModelRepository()
        lifecycle = ModelLifecycle(config, repository, Metrics(), SystemdNotifier(None))
        await lifecycle.start()
        try:
            await body(DataPlane(repository, RepositoryReadiness(repository)))
        finally:
            await lifecycle.close()

    asyncio.run(run())


def mlp_request(rows: np.ndarray, **fields: object) -> InferRequest:
    return InferRequest("mlp", None, {"x": rows}, {"x": "FP32"}, **fields)  # type: ignore[arg-type]


def test_infer_returns_the_models_own_outputs_with_what_the_access_log_needs(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    rows = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    with torch.no_grad():
        expected = Mlp()(torch.from_numpy(rows)).numpy()

    async def body(plane: DataPlane) -> None:
        response = await plane.infer(mlp_request(rows, id="r-1"))
        assert (response.model_name, response.model_version, response.id) == ("mlp", "1", "r-1")
        [output] = response.outputs
        assert (output.name, output.datatype, output.binary) == ("output__0", "FP32", False)
        np.testing.assert_allclose(output.data, expected, rtol=1e-5, atol=1e-6)
        assert response.batch_size >= 2
        assert response.queue_s >= 0 and response.compute_s > 0

    with_plane(artifacts, tmp_path, body)


def test_wanted_outputs_come_in_the_asked_order_with_their_binary_hints(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    b = np.arange(3, dtype=np.int64).reshape(1, 3)
    c = np.array([[True, False]])
    inputs: dict[str, np.ndarray] = {"a": a, "b": b, "c": c}
    datatypes = {"a": "FP32", "b": "INT64", "c": "BOOL"}

    async def body(plane: DataPlane) -> None:
        wanted = [RequestedOutput("output__2", True), RequestedOutput("output__0", False)]
        response = await plane.infer(InferRequest("mixed", "1", inputs, datatypes, outputs=wanted))
        assert [(o.name, o.binary) for o in response.outputs] == [
            ("output__2", True),
            ("output__0", False),
        ]
        np.testing.assert_array_equal(response.outputs[0].data, ~c)
        np.testing.assert_array_equal(response.outputs[1].data, a * 2)
        every = await plane.infer(
            InferRequest("mixed", None, inputs, datatypes, binary_output=True)
        )
        assert [(o.name, o.binary) for o in every.outputs] == [
            ("output__0", True),
            ("output__1", True),
            ("output__2", True),
        ]

    with_plane(artifacts, tmp_path, body)


@pytest.mark.parametrize(
    ("request_fields", "named"),
    [
        ({"datatypes": {"x": "FP64"}}, "input 'x' must be FP32, got FP64"),
        ({"inputs": {"nope": np.zeros((1, 8), np.float32)}}, "no input 'nope'"),
        ({"outputs": [RequestedOutput("nope", False)]}, "no output 'nope'"),
        (
            {"outputs": [RequestedOutput("output__0", False), RequestedOutput("output__0", True)]},
            "output 'output__0' is requested twice",
        ),
    ],
)
def test_a_request_that_does_not_fit_the_model_is_refused_naming_what(
    artifacts: dict[str, Path], tmp_path: Path, request_fields: dict[str, object], named: str
) -> None:
    request = mlp_request(np.zeros((1, 8), np.float32))
    for key, value in request_fields.items():
        setattr(request, key, value)
    if "inputs" in request_fields:
        request.datatypes = {"nope": "FP32"}

    async def body(plane: DataPlane) -> None:
        with pytest.raises(InvalidInput, match=named):
            await plane.infer(request)
        with pytest.raises(ModelNotFound, match="unknown model 'gone'"):
            await plane.infer(InferRequest("gone", None, {}, {}))

    with_plane(artifacts, tmp_path, body)


def slow_request(rounds: int, **fields: object) -> InferRequest:
    rows = np.array([[rounds]], dtype=np.float32)
    return InferRequest("slow", None, {"x": rows}, {"x": "FP32"}, **fields)  # type: ignore[arg-type]


def test_the_clients_timeout_shortens_the_models_deadline(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    async def body(plane: DataPlane) -> None:
        # timeout_ms is a minute: only the client's millisecond can expire this request.
        with pytest.raises(DeadlineExceeded):
            await plane.infer(slow_request(3000, timeout_us=1000))

    with_plane(artifacts, tmp_path, body)


def test_a_cancelled_call_leaves_the_queue(artifacts: dict[str, Path], tmp_path: Path) -> None:
    async def body(plane: DataPlane) -> None:
        model = plane.model("slow")
        assert isinstance(model, LocalModel)
        batcher = model.primary.batcher
        running = asyncio.create_task(plane.infer(slow_request(3000)))
        while batcher.queue_depth == 0 and not running.done():  # bounded: the model runs it
            await asyncio.sleep(0)
        while batcher.queue_depth != 0:  # its batch has started
            await asyncio.sleep(0)
        queued = asyncio.create_task(plane.infer(slow_request(1)))
        while batcher.queue_depth == 0:
            await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        # Left the queue while the first batch still runs, so no batch took it.
        assert not running.done()
        assert batcher.queue_depth == 0
        response = await running
        assert response.outputs[0].data.tolist() == [[3000.0]]

    with_plane(artifacts, tmp_path, body)


def test_metadata_readiness_and_index_are_plain_facts_for_any_transport(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    async def body(plane: DataPlane) -> None:
        assert plane.live() and plane.ready()
        assert plane.model_ready("mlp", "1")
        described = plane.model_metadata("mlp", None)
        assert described["name"] == "mlp" and described["versions"] == ["1"]
        assert described["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
        assert described["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
        assert plane.model_config("mlp")["max_batch_size"] == 8
        assert {"name": "slow", "version": "1", "state": "READY"} in plane.repository_index()
        assert plane.check_room("mlp").name == "mlp"
        with pytest.raises(ModelNotFound, match="has no version '9'"):
            plane.model_metadata("mlp", "9")

    with_plane(artifacts, tmp_path, body)


def test_classification_and_refused_parameters_are_the_planes_whatever_the_transport(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    rows = np.array([[1, -2, 3, -4], [0, 0, 0, 0]], dtype=np.float32)
    inputs: dict[str, np.ndarray] = {
        "a": rows,
        "b": np.zeros((2, 3), np.int64),
        "c": np.zeros((2, 2), np.bool_),
    }
    datatypes = {"a": "FP32", "b": "INT64", "c": "BOOL"}

    async def body(plane: DataPlane) -> None:
        wanted = [RequestedOutput("output__0", False, {"classification": 2})]
        response = await plane.infer(InferRequest("mixed", None, inputs, datatypes, outputs=wanted))
        [output] = response.outputs
        assert output.datatype == "BYTES" and output.data.shape == (2, 2)
        # a * 2: [2, -4, 6, -8] ranks 2 then 0; an all-zero row ranks by index.
        assert output.data.tolist() == [[b"6.0:2", b"2.0:0"], [b"0.0:0", b"0.0:1"]]
        refused = InferRequest("mixed", None, inputs, datatypes, parameters={"sequence_id": 3})
        with pytest.raises(InvalidInput, match="'sequence_id' is not supported"):
            await plane.infer(refused)
        refused = InferRequest("mixed", None, inputs, datatypes, input_parameters={"a": {"z": 1}})
        with pytest.raises(InvalidInput, match="input 'a': parameter 'z' is not supported"):
            await plane.infer(refused)

    with_plane(artifacts, tmp_path, body)
