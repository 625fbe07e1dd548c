"""Infer calls take their own route ahead of Starlette's router: every infer path still reaches
the endpoint, everything else still reaches Starlette, and a bug in the endpoint is a JSON 500
with a request id, never a dropped connection or a trace."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import InferenceError
from appliance.logs import configure_logging
from appliance.metrics import Metrics
from appliance.repository import ModelRepository, ServedModel
from appliance.rest import AppContext, HttpSettings, create_app
from tests.support.asgi import asgi_request
from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.leaks import assert_no_leak
from tests.support.server import ServerProcess, running_server

GOOD = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
).encode()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("infer-routing")
    config = server_config(workdir, model_table("mlp", artifacts["mlp.pt2"], version="3"))
    with running_server(config, workdir) as served:
        yield served


@pytest.mark.parametrize("path", ["/v2/models/mlp/infer", "/v2/models/mlp/versions/3/infer"])
def test_both_infer_paths_reach_the_model(server: ServerProcess, path: str) -> None:
    reply = call(server, "POST", path, GOOD)
    assert reply.status == 200, reply
    document = reply.json()
    assert (document["model_name"], document["model_version"]) == ("mlp", "3")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/mlp/infer/more", 404),
        ("/v2/models//infer", 404),
        ("/v2/models/a%2Fb/infer", 404),  # decodes to a path with one more segment
        ("/v2/models/mlp/versions/infer", 405),  # model metadata of version "infer": GET only
        ("/v2/models/mlp/infer/", 307),  # Starlette's redirect to the path without the slash
    ],
)
def test_paths_that_only_look_like_infer_go_through_the_router(
    server: ServerProcess, path: str, status: int
) -> None:
    reply = call(server, "POST", path, GOOD)
    assert reply.status == status, reply
    if status != 307:
        assert reply.error()


def test_other_methods_on_infer_get_405_with_allow(server: ServerProcess) -> None:
    reply = call(server, "GET", "/v2/models/mlp/infer")
    assert reply.status == 405
    assert "GET is not allowed" in reply.error()
    assert reply.headers["allow"] == "POST"


def test_the_other_endpoints_still_answer(server: ServerProcess) -> None:
    assert call(server, "GET", "/v2/models/mlp/versions/3/ready").status == 200
    assert call(server, "GET", "/v2/health/ready").status == 200
    assert b"aegis_inference_requests_total" in call(server, "GET", "/metrics").body


class BrokenRepository(ModelRepository):
    """A repository with a bug: the endpoint's own safety net is what is under test."""

    def get(self, name: str, version: str | None = None) -> ServedModel:
        raise KeyError(f"/var/lib/aegis/{name} vanished")


class Ready:
    def is_ready(self) -> bool:
        return True

    def not_ready_reason(self) -> str:
        return ""

    def is_draining(self) -> bool:
        return False


def test_a_bug_in_the_endpoint_is_a_json_500_and_the_trace_goes_to_the_log() -> None:
    assert not issubclass(KeyError, InferenceError)
    stream = io.StringIO()
    configure_logging(stream=stream)
    context = AppContext(BrokenRepository(), Metrics(), HttpSettings(), Ready(), None)
    app = create_app(context)
    status, headers, body = asyncio.run(
        asgi_request(app, "POST", "/v2/models/m/infer", GOOD, [(b"x-request-id", b"req-1")])
    )
    assert status == 500
    assert json.loads(body) == {"error": "internal server error"}
    assert headers[b"x-request-id"] == b"req-1"
    assert b"/var/lib" not in body
    log = stream.getvalue()
    assert "unhandled_error" in log and "vanished" in log and "Traceback" in log


def test_replies_to_odd_infer_paths_leak_nothing(server: ServerProcess) -> None:
    assert_no_leak(call(server, "POST", "/v2/models/%2e%2e/infer", GOOD))
