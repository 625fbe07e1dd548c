"""A model served at several versions lists all of them in its metadata, whichever version was
asked for and over either transport: a client deciding which version to call reads this list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.server import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("versions")
    models = (
        model_table("mlp", artifacts["mlp.pt2"], version="1")
        + model_table("mlp", artifacts["mlp.pt2"], version="2")
        + model_table("mlp", artifacts["mlp.pt2"], version="10")
    )
    with running_server(server_config(workdir, models), workdir) as served:
        yield served


@pytest.mark.parametrize("path", ["/v2/models/mlp", "/v2/models/mlp/versions/1"])
def test_http_metadata_lists_every_served_version(server: ServerProcess, path: str) -> None:
    reply = call(server, "GET", path)
    assert reply.status == 200, reply
    assert reply.json()["versions"] == ["1", "2", "10"]


@pytest.mark.parametrize("version", ["", "2"])
def test_grpc_metadata_lists_every_served_version(server: ServerProcess, version: str) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        metadata = client.get_model_metadata("mlp", version, as_json=True)
    finally:
        client.close()
    assert metadata["versions"] == ["1", "2", "10"]


def test_a_request_naming_no_version_is_answered_by_the_highest(server: ServerProcess) -> None:
    body = json_infer("x", "FP32", [1, 8], [0.5] * 8)
    reply = call(server, "POST", "/v2/models/mlp/infer", body)
    assert reply.status == 200, reply
    assert reply.json()["model_version"] == "10"  # numerically highest, not "2"
