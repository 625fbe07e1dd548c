"""Failures over gRPC: the status code that stands for HTTP's status and HTTP's own message;
deadlines; cancelled calls leaving the queue; a concurrent mix of good and bad requests."""

from __future__ import annotations

import queue
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TypeAlias

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.config import model_table, server_config, tensor_table
from tests.support.http import get_text
from tests.support.load import ONE_THREAD, rounds_for, slow_model
from tests.support.models import Mlp
from tests.support.server import ServerProcess, running_server
from tests.support.waiting import wait_for

CODES = {
    "400": "StatusCode.INVALID_ARGUMENT",
    "404": "StatusCode.NOT_FOUND",
    "500": "StatusCode.INTERNAL",
    "503": "StatusCode.UNAVAILABLE",
    "504": "StatusCode.DEADLINE_EXCEEDED",
}

Client: TypeAlias = grpcclient.InferenceServerClient | httpclient.InferenceServerClient
Clients = tuple[grpcclient.InferenceServerClient, httpclient.InferenceServerClient]
# What collect_by_id() queues: (request id, (result, error)).
Answers = queue.Queue[tuple[str, tuple[grpcclient.InferResult, InferenceServerException | None]]]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("grpc-errors")
    models = (
        model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 4")
        + slow_model("timeout_ms = 60000").format(slow=artifacts["slow.pt"])
        + model_table("failing", artifacts["failing.pt"], "max_batch_size = 4")
        + tensor_table("inputs", "x", "FP32", [-1, 4])
        + tensor_table("outputs", "y", "FP32", [-1, 4])
    )
    text = server_config(workdir, models, "max_request_bytes = 65536")
    # One torch thread: the Slow model's CPU time is its time on the wall (`rounds_for`).
    with running_server(text, workdir, ONE_THREAD) as server:
        yield server


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[Clients]:
    grpc_client = grpcclient.InferenceServerClient(server.grpc_address)
    http_client = httpclient.InferenceServerClient(server.address, network_timeout=60)
    yield grpc_client, http_client
    grpc_client.close()
    http_client.close()


def tensor(
    module: ModuleType, name: str, array: np.ndarray, datatype: str
) -> grpcclient.InferInput | httpclient.InferInput:
    built = module.InferInput(name, list(array.shape), datatype)
    built.set_data_from_numpy(array, **({} if module is grpcclient else {"binary_data": True}))
    return built


def x8(rows: int = 1, dtype: type = np.float32) -> np.ndarray:
    return np.ones((rows, 8), dtype=dtype)


# Each case: model, version, inputs as (name, array, datatype), requested outputs, and the
# infer call's other arguments.
Case = tuple[str, str, list[tuple[str, np.ndarray, str]], list[str] | None, dict[str, object]]
BAD: dict[str, Case] = {
    "unknown model": ("nope", "", [("x", x8(), "FP32")], None, {}),
    "unknown version": ("mlp", "9", [("x", x8(), "FP32")], None, {}),
    "wrong datatype": ("mlp", "", [("x", x8(1, np.int32), "INT32")], None, {}),
    "wrong shape": ("mlp", "", [("x", np.ones((2, 7), np.float32), "FP32")], None, {}),
    "unknown input": ("mlp", "", [("y", x8(), "FP32")], None, {}),
    "unknown output": ("mlp", "", [("x", x8(), "FP32")], ["nope"], {}),
    "too many rows": ("mlp", "", [("x", x8(5), "FP32")], None, {}),
    "model failure": ("failing", "", [("x", -np.ones((1, 4), np.float32), "FP32")], None, {}),
    "unknown parameter": ("mlp", "", [("x", x8(), "FP32")], None, {"parameters": {"tag": "a"}}),
    "priority": ("mlp", "", [("x", x8(), "FP32")], None, {"priority": 2}),
}


def send(module: ModuleType, client: Client, case: Case) -> InferenceServerException:
    model, version, inputs, outputs, extra = case
    built = [tensor(module, name, array, datatype) for name, array, datatype in inputs]
    wanted = None if outputs is None else [module.InferRequestedOutput(o) for o in outputs]
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, built, model_version=version, outputs=wanted, **extra)
    return raised.value


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_get_the_status_and_message_http_gives(clients: Clients, case: str) -> None:
    grpc_client, http_client = clients
    over_grpc = send(grpcclient, grpc_client, BAD[case])
    over_http = send(httpclient, http_client, BAD[case])
    assert over_grpc.status() == CODES[str(over_http.status())]
    assert over_grpc.message() == over_http.message()
    assert over_grpc.message()  # says what and why


def test_a_message_over_the_limit_is_resource_exhausted(clients: Clients) -> None:
    grpc_client, _ = clients
    big = tensor(grpcclient, "x", np.ones((4096, 8), np.float32), "FP32")  # 128 KiB > 64 KiB
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer("mlp", [big])
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_repository_rpcs_are_off_without_a_token_file(clients: Clients) -> None:
    grpc_client, _ = clients
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.get_model_repository_index()
    assert raised.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "set server.admin_token_file" in raised.value.message()


def test_concurrent_mix_of_good_and_bad_requests_answers_every_one(clients: Clients) -> None:
    grpc_client, _ = clients
    rng = np.random.default_rng(5)
    answers: Answers = queue.Queue()
    sent: dict[str, np.ndarray | None] = {}
    x: np.ndarray | None
    for index in range(100):
        request_id = f"m{index}"
        if index % 3 == 0:
            inputs = [tensor(grpcclient, "x", x8(1, np.int32), "INT32")]
            sent[request_id] = None
        else:
            x = rng.standard_normal((1, 8)).astype(np.float32)
            inputs = [tensor(grpcclient, "x", x, "FP32")]
            sent[request_id] = x
        grpc_client.async_infer(
            "mlp", inputs, collect_by_id(answers, request_id), request_id=request_id
        )
    got = dict(answers.get(timeout=60) for _ in sent)
    assert set(got) == set(sent)
    for request_id, x in sent.items():
        result, error = got[request_id]
        if x is None:
            assert error is not None and error.status() == "StatusCode.INVALID_ARGUMENT"
        else:
            assert error is None, error
            with torch.no_grad():
                want = Mlp()(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(result.as_numpy("output__0"), want, rtol=1e-5)


def collect_by_id(answers: Answers, request_id: str) -> Callable[..., None]:
    def callback(result: object, error: InferenceServerException | None) -> None:
        answers.put((request_id, (result, error)))

    return callback


def slow_input(rounds: int) -> grpcclient.InferInput:
    return tensor(grpcclient, "x", np.array([[rounds]], np.float32), "FP32")


def metric(server: ServerProcess, pattern: str) -> float:
    found = re.search(pattern, get_text(server, "/metrics", timeout_s=10), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


DEPTH = r'^aegis_queue_depth\{model="slow",version="1"\} (\S+)$'
BATCHES = r'^aegis_batch_size_count\{model="slow",version="1"\} (\S+)$'
COMPUTED = r'^aegis_compute_duration_seconds_count\{model="slow",version="1"\} (\S+)$'
CANCELLED = (
    r'^aegis_inference_requests_total\{code="499",model="slow",protocol="grpc",version="1"\}'
    r" (\S+)$"
)


def test_a_1ms_deadline_is_deadline_exceeded(clients: Clients, server: ServerProcess) -> None:
    grpc_client, _ = clients
    rounds = rounds_for(server, 1.0)
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer("slow", [slow_input(rounds)], client_timeout=0.001)
    assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_the_timeout_parameter_is_the_servers_deadline(
    clients: Clients, server: ServerProcess
) -> None:
    """A request still queued when its `timeout` passes gets HTTP's 504 message, as
    DEADLINE_EXCEEDED."""
    grpc_client, _ = clients
    rounds = rounds_for(server, 1.0)
    answers: Answers = queue.Queue()
    for request_id in ("busy", "next"):
        grpc_client.async_infer("slow", [slow_input(rounds)], collect_by_id(answers, request_id))
    wait_for(lambda: metric(server, DEPTH) == 1, 30, "one running, one queued")
    # Queued behind both, for longer than its own `timeout` of 50 ms.
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer("slow", [slow_input(1)], timeout=50_000)
    assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert raised.value.message() == "deadline passed before its batch started"
    for _ in range(2):
        _, (_, error) = answers.get(timeout=60)
        assert error is None


def test_a_cancelled_stream_leaves_nothing_queued(clients: Clients, server: ServerProcess) -> None:
    grpc_client, _ = clients
    rounds = rounds_for(server, 3.0)
    batches = metric(server, BATCHES)
    computed = metric(server, COMPUTED)
    cancelled = metric(server, CANCELLED)
    grpc_client.start_stream(lambda result, error: None)
    for request_id in ("busy", "q0", "q1", "q2"):
        grpc_client.async_stream_infer("slow", [slow_input(rounds)], request_id=request_id)
    # One batch at a time, of one row: the first runs (about 3 s), three wait behind it.
    wait_for(lambda: metric(server, DEPTH) == 3, 30, "three requests queued")
    grpc_client.stop_stream(cancel_requests=True)
    # Gone from the queue while the busy batch still runs: the queue empties first.
    wait_for(
        lambda: metric(server, DEPTH) == 0 or metric(server, COMPUTED) > computed,
        120,
        "the queue to empty or the busy batch to end",
    )
    assert metric(server, COMPUTED) == computed, "the queue emptied only when the batch ended"
    wait_for(lambda: metric(server, CANCELLED) == cancelled + 4, 30, "four cancelled calls")
    wait_for(lambda: metric(server, COMPUTED) == computed + 1, 120, "the busy batch to end")
    # Only the batch that was running when the stream was cancelled was computed.
    assert metric(server, BATCHES) == batches + 1
    assert metric(server, DEPTH) == 0
