"""Every shape the codec admits is served or refused with a 4xx, never a 500: zero rows, zero-size
inner dimensions, empty data, scalars, in JSON and in binary, for every datatype a model takes."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bodies import binary_body
from tests.support.config import model_table, server_config, tensor_table
from tests.support.fault_models import Doubles
from tests.support.http import call
from tests.support.models import script_pt
from tests.support.server import ServerProcess, running_server

SHAPES: tuple[list[int], ...] = ([0], [], [0, 8], [1, 0], [0, 0], [2, 0], [1, 0, 3], [0, 3], [1, 8])
# Each model's inputs, by name and datatype, as its signature has them.
MODELS = {
    "mlp": [("x", "FP32")],
    "mixed": [("a", "FP32"), ("b", "INT64"), ("c", "BOOL")],
    "anywidth": [("x", "FP32")],
    "ints": [("x", "INT32")],
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("edge-shapes")
    doubles = script_pt(Doubles(), workdir / "doubles.pt")
    models = (
        model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0")
        + model_table("mixed", artifacts["mixed.pt2"], "warmup_iters = 0")
        + model_table("anywidth", doubles, "warmup_iters = 0")
        + tensor_table("inputs", "x", "FP32", [-1, -1])
        + tensor_table("outputs", "y", "FP32", [-1, -1])
        + model_table("ints", doubles, "warmup_iters = 0")
        + tensor_table("inputs", "x", "INT32", [-1, -1])
        + tensor_table("outputs", "y", "INT32", [-1, -1])
    )
    with running_server(server_config(workdir, models), workdir) as served:
        yield served


def bodies(inputs: list[tuple[str, str]], shape: list[int]) -> list[tuple[bytes, dict[str, str]]]:
    """The same edge shape for every input: empty JSON data, and empty binary data."""
    as_json = json.dumps(
        {
            "inputs": [
                {"name": name, "datatype": datatype, "shape": shape, "data": []}
                for name, datatype in inputs
            ]
        }
    ).encode()
    document = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": shape}
            | {"parameters": {"binary_data_size": 0}}
            for name, datatype in inputs
        ]
    }
    return [(as_json, {}), binary_body(document)]


def test_edge_shapes_are_served_or_refused_with_4xx(server: ServerProcess) -> None:
    statuses: dict[int, int] = {}
    for (model, inputs), shape in itertools.product(MODELS.items(), SHAPES):
        for body, headers in bodies(inputs, shape):
            reply = call(server, "POST", f"/v2/models/{model}/infer", body, headers)
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            assert reply.status < 500, (model, shape, reply)
            if reply.status != 200:
                assert 400 <= reply.status < 500 and reply.error(), (model, shape, reply)
    print(f"\nFIGURES edge shapes: statuses {dict(sorted(statuses.items()))}")
    assert call(server, "GET", "/v2/health/ready").status == 200


def test_a_zero_size_dimension_is_refused_naming_the_input(server: ServerProcess) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 0], "data": []}]}
    ).encode()
    reply = call(server, "POST", "/v2/models/ints/infer", body)
    assert reply.status == 400
    assert "input 'x' has shape [1, 0]" in reply.error()
