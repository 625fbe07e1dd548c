"""A full queue is refused at once with 503 + Retry-After; a passed deadline is 504 at once."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from appliance.grpc.proto import inference_pb2 as pb
from appliance.grpc.proto import inference_pb2_grpc as pb_grpc
from tests.conftest import ServerFactory
from tests.support.http import call, free_port
from tests.support.load import (
    ONE_THREAD,
    computing,
    in_background,
    post_slow,
    queue_depth,
    rounds_for,
    slow_body,
    slow_model,
)
from tests.support.logs import log_events
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

Background = tuple[threading.Thread, list[tuple[int, dict[str, str], bytes]]]


def a_full_queue(
    serve: ServerFactory,
    artifacts: dict[str, Path],
    batch_s: float,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[ServerProcess, Background, Background]:
    """A server whose Slow model runs a batch of about `batch_s` with one more request queued
    behind it (`max_queue_size = 1`): the next request finds the queue full."""
    server = serve(
        slow_model("max_queue_size = 1\ntimeout_ms = 120000").format(slow=artifacts["slow.pt"]),
        env={**ONE_THREAD, **(env or {})},
        port=port,
    )
    rounds = rounds_for(server, batch_s)
    running = in_background(server, slow_body(rounds))
    wait_for(lambda: computing(server), 30, "the long batch to start")
    queued = in_background(server, slow_body(1))
    wait_for(
        lambda: queue_depth(server) == 1 or not running[0].is_alive(), 30, "a request to queue"
    )
    assert running[0].is_alive(), "the long batch ended before the queue could fill"
    return server, running, queued


def refused_until_doubled(
    refuse: Callable[[], str], running: threading.Thread, first: str, doubled: str
) -> None:
    """Call `refuse` (one refused request; the wait it announced) every 50 ms while the long batch
    runs, until the announced wait goes from `first` to `doubled`."""
    announced: list[str] = []
    while running.is_alive() and len(announced) < 200 and doubled not in announced:
        announced.append(refuse())
        time.sleep(0.05)
    assert running.is_alive(), "the long batch ended before the refusals went on for a second"
    assert announced[0] == first and announced[-1] == doubled, announced


def v2_refusal(server: ServerProcess) -> tuple[int, str | None]:
    """The status of a request at the V2 door, and the Retry-After it announced."""
    status, headers, _ = post_slow(server, slow_body(1))
    return status, headers.get("retry-after")


def v2_retry_after(server: ServerProcess) -> str:
    """The Retry-After of a refusal at the V2 door."""
    status, retry_after = v2_refusal(server)
    assert status == 503 and retry_after is not None
    return retry_after


def test_full_queue_is_refused_at_once_with_retry_after(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server, (running, _), (queued, queued_result) = a_full_queue(serve, artifacts, 4.0)
    started = time.perf_counter()
    status, headers, payload = post_slow(server, slow_body(1))
    elapsed = time.perf_counter() - started
    assert status == 503, payload
    assert headers["retry-after"] == "1"
    assert "queue full" in json.loads(payload)["error"]
    assert elapsed < 0.5, elapsed
    running.join(120)
    queued.join(120)
    assert queued_result[0][0] == 200


def test_deadline_gives_504_while_a_long_batch_still_runs(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server = serve(
        slow_model("timeout_ms = 120000").format(slow=artifacts["slow.pt"]), env=ONE_THREAD
    )
    rounds = rounds_for(server, 3.0)
    running, running_result = in_background(server, slow_body(rounds))
    wait_for(lambda: computing(server), 30, "the long batch to start")
    started = time.perf_counter()
    status, _, payload = post_slow(server, slow_body(1, timeout_us=300_000))
    elapsed = time.perf_counter() - started
    assert status == 504, payload
    assert "deadline passed before its batch started" in json.loads(payload)["error"]
    assert 0.25 <= elapsed < 1.5, elapsed
    assert running.is_alive(), "the long batch should still be running"
    running.join(120)
    assert running_result[0][0] == 200


def test_refusals_that_go_on_announce_a_longer_retry_after(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server, (running, _), (queued, _) = a_full_queue(serve, artifacts, 6.0)
    refused_until_doubled(lambda: v2_retry_after(server), running, "1", "2")
    running.join(120)
    queued.join(120)


def test_refusals_from_an_engine_behind_front_ends_are_paced_like_those_at_the_door(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    """Two front ends, one engine whose queue holds one request. A front end refuses at its door
    once it has sent the engine as much as the engine can hold; otherwise it sends the request
    on and the engine refuses it. Either way the refusal announces a longer Retry-After once that
    front end's refusals have gone on for a second (the engine's used to say 1 for ever). Each
    front end paces its own refusals, and which one a new connection reaches is the kernel's
    choice: the client goes on until each has refused for over a second."""
    # One torch thread (ONE_THREAD, which the engine keeps) on one core: the long batch takes on
    # the wall the CPU time it was sized by, whatever runs on the host's other cores.
    core = min(os.sched_getaffinity(0))
    server = serve(
        slow_model("max_queue_size = 1\ntimeout_ms = 120000").format(slow=artifacts["slow.pt"]),
        "frontends = 2",
        env=ONE_THREAD,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    rounds = rounds_for(server, 12.0)
    running, _ = in_background(server, slow_body(rounds))
    wait_for(lambda: computing(server), 30, "the long batch to start")
    queued, _ = in_background(server, slow_body(1))
    wait_for(lambda: queue_depth(server) == 1, 30, "a request to queue")
    announced: dict[str, tuple[float, str]] = {}  # request id: (when, Retry-After)

    def by_frontend() -> dict[str, list[tuple[float, str]]]:
        """Each front end's refusals so far, in order, by the access lines written."""
        frontends = {
            line["request_id"]: str(line["frontend"]) for line in log_events(server, "infer")
        }
        refusals: dict[str, list[tuple[float, str]]] = {}
        for request_id, refusal in announced.items():
            if request_id in frontends:
                refusals.setdefault(frontends[request_id], []).append(refusal)
        return refusals

    def late(refusals: list[tuple[float, str]]) -> list[str]:
        """The Retry-After of refusals more than 1.2 s after the front end's first."""
        return [retry for at, retry in refusals if at - refusals[0][0] > 1.2]

    first = time.monotonic()
    while not (len(seen := by_frontend()) == 2 and all(late(each) for each in seen.values())):
        assert running.is_alive(), f"the long batch ended before both paced: {by_frontend()}"
        assert time.monotonic() - first < 10, f"a front end got no refusals: {by_frontend()}"
        request_id = f"refused-{len(announced)}"
        reply = call(
            server, "POST", "/v2/models/slow/infer", slow_body(1), {"X-Request-Id": request_id}
        )
        assert reply.status == 503, reply
        announced[request_id] = (time.monotonic(), reply.headers["retry-after"])
        time.sleep(0.05)
    assert all(int(retry) >= 2 for each in seen.values() for retry in late(each)), seen
    running.join(120)
    queued.join(120)


def test_refusals_on_vertex_predict_are_paced_like_those_at_the_v2_door(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    port = free_port()
    vertex = {"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/predict"}
    server, (running, _), (queued, _) = a_full_queue(serve, artifacts, 6.0, vertex, port)
    body = json.dumps({"instances": [[1.0]]}).encode()

    def predict_retry_after() -> str:
        reply = call(server, "POST", "/predict", body)
        assert reply.status == 503, reply
        return reply.headers["retry-after"]

    refused_until_doubled(predict_retry_after, running, "1", "2")
    # The V2 door and the predict route share one pacing: the next V2 refusal says 2 as well.
    refusal = v2_refusal(server)
    assert running.is_alive(), "the long batch ended before the V2 refusal"
    assert refusal == (503, "2")
    running.join(120)
    queued.join(120)


def test_refusals_over_grpc_carry_a_pushback_paced_like_the_v2_doors_retry_after(
    serve: ServerFactory, artifacts: dict[str, Path]
) -> None:
    server, (running, _), (queued, _) = a_full_queue(serve, artifacts, 6.0)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 1], contents=pb.InferTensorContents(fp32_contents=[1])
    )
    request = pb.ModelInferRequest(model_name="slow", inputs=[tensor])
    with grpc.insecure_channel(server.grpc_address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        def pushback() -> str:
            try:
                infer(request, timeout=30)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return str(dict(error.trailing_metadata())["grpc-retry-pushback-ms"])
            raise AssertionError("a request was served while the queue was full")

        refused_until_doubled(pushback, running, "1000", "2000")
    # One pacing for both doors: the next HTTP refusal announces the same wait.
    refusal = v2_refusal(server)
    assert running.is_alive(), "the long batch ended before the HTTP refusal"
    assert refusal == (503, "2")
    running.join(120)
    queued.join(120)
