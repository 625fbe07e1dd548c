"""The model zoo on the torch runtime: each model matches its eager module, directly and over
HTTP, where the encoder's sequence length is a named dimension padded to its buckets."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from appliance.config import ModelConfig
from appliance.runtimes.torch_runtime import TorchRuntime
from tests.support.config import server_config
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import get_json, infer
from tests.support.zoo import ZOO, Tolerance, export_zoo, model_toml

TOLERANCE: Tolerance = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_zoo(tmp_path_factory.mktemp("zoo"))


def assert_matches(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(outputs) == set(expected)
    for name, want in expected.items():
        assert outputs[name].shape == want.shape, name
        np.testing.assert_allclose(outputs[name], want, **TOLERANCE, err_msg=name)


@pytest.mark.parametrize("name", list(ZOO))
def test_each_zoo_model_matches_its_eager_module(zoo: dict[str, Path], name: str) -> None:
    model = ZOO[name]
    config = ModelConfig(model_path=str(zoo[name]), max_batch_size=8, **model.config())
    runtime = TorchRuntime(config, zoo[name])
    runtime.load()
    rng = np.random.default_rng(2)
    for rows in (1, 3, 8):
        for length in (5, 8, 32) if model.dims else (None,):
            inputs = model.example(rng, rows, {"seq": length} if length else None)
            assert_matches(runtime.run(inputs), model.eager(inputs))


@pytest.fixture(scope="module")
def zoo_server(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("zoo-server")
    models = "".join(
        model_toml(name, zoo[name], ZOO[name], max_batch_size=8, max_queue_delay_ms=20.0)
        for name in ZOO
    )
    # The encoder again, undeclared: its signature and limits come from the artifact alone.
    models += f'[[models]]\nname = "encoder_raw"\nmodel_path = "{zoo["encoder"]}"\n'
    with running_server(server_config(workdir, models), workdir) as server:
        yield server


def test_every_zoo_model_serves_over_http_and_matches_eager(zoo_server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    for name, model in ZOO.items():
        inputs = model.example(rng, 3, {"seq": 11})
        status, outputs = infer(zoo_server.url, name, inputs)
        assert status == 200, outputs
        assert isinstance(outputs, dict)
        assert_matches(outputs, model.eager(inputs))


def test_concurrent_requests_of_any_length_come_back_at_their_own_length(
    zoo_server: ServerProcess,
) -> None:
    encoder = ZOO["encoder"]
    rng = np.random.default_rng(4)
    requests = [
        encoder.example(rng, int(rng.integers(1, 4)), {"seq": int(rng.integers(1, 33))})
        for _ in range(24)
    ]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda inputs: infer(zoo_server.url, "encoder", inputs), requests))
    for inputs, (status, outputs) in zip(requests, replies, strict=True):
        assert status == 200, outputs
        assert isinstance(outputs, dict)
        # The padding is masked out: the padded batch gives what the request alone gives.
        assert_matches(outputs, encoder.eager(inputs))


def test_named_dimensions_and_the_exports_limits_are_in_the_metadata(
    zoo_server: ServerProcess,
) -> None:
    metadata = get_json(zoo_server.url, "/v2/models/encoder")
    assert metadata["parameters"]["dims"] == {"seq": [8, 16, 32]}
    assert {"input": "ids", "axis": 1, "min": 1, "max": 64} in metadata["parameters"][
        "dimension_limits"
    ]
    assert metadata["inputs"][0] == {"name": "ids", "datatype": "INT64", "shape": [-1, -1]}


@pytest.mark.parametrize(
    ("model", "lengths", "error"),
    [
        (
            "encoder",
            (33, 33),
            "input 'ids' has seq = 33 (dimension 1), past the largest bucket of 'seq' (32)",
        ),
        (
            "encoder",
            (10, 12),
            "input 'mask' has seq = 12, input 'ids' has seq = 10: inputs sharing a dimension "
            "must agree",
        ),
        (
            "encoder_raw",
            (65, 65),
            "input 'ids' dimension 1 has size 65, outside what the model accepts (1 .. 64)",
        ),
        (
            "encoder_raw",
            (10, 12),
            "input 'mask' dimension 1 has size 12, input 'ids' dimension 1 has 10: the model "
            "takes them equal",
        ),
    ],
)
def test_a_length_outside_the_buckets_or_the_exports_limits_is_a_400_naming_it(
    zoo_server: ServerProcess, model: str, lengths: tuple[int, int], error: str
) -> None:
    rng = np.random.default_rng(5)
    ids_length, mask_length = lengths
    inputs = {
        "ids": rng.integers(1, 100, (2, ids_length)),
        "mask": np.ones((2, mask_length), dtype=np.int64),
    }
    assert infer(zoo_server.url, model, inputs) == (400, error)


def test_an_undeclared_export_serves_within_its_limits(zoo_server: ServerProcess) -> None:
    encoder = ZOO["encoder"]
    inputs = encoder.example(np.random.default_rng(6), 2, {"seq": 40})
    status, outputs = infer(zoo_server.url, "encoder_raw", inputs)
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    assert_matches(outputs, encoder.eager(inputs))
