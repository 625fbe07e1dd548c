"""Front ends and engines as real processes: `aegis serve` with `[server] frontends`."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from tests.conftest import ServerFactory
from tests.support.admin import admin, token_file
from tests.support.config import model_table
from tests.support.frontends import maps, pids
from tests.support.logs import log_events
from tests.support.metrics import metrics_page
from tests.support.served_mlp import Load, X, expected, infer, replace_model, run_load
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for


def answered_by(server: ServerProcess) -> list[dict[str, Any]]:
    return [event for event in log_events(server, "infer") if event.get("status") == 200]


def sample(text: str, name: str, label: str, index: int) -> float:
    match = re.search(rf'^{name}\{{{label}="{index}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {label} {index} not in the scrape"
    return float(match.group(1))


def test_both_front_ends_answer_and_one_engine_batch_holds_requests_from_both(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 32\nmax_queue_delay_ms = 20"),
        "frontends = 2",
    )
    assert len(pids(server, "frontend")) == 2 and len(pids(server, "replica")) == 1
    clients = [Load(server, limit_count=100) for _ in range(6)]
    run_load(clients, lambda: [cast(object, client.join(120)) for client in clients], settle_s=0)
    assert {status for client in clients for _, status, _ in client.results} == {200}
    wait_for(lambda: len(answered_by(server)) >= 600, 10, "access lines")
    # Each access line names the engine batch its request rode in.
    frontends_of: dict[int, set[int]] = {}
    for line in answered_by(server):
        frontends_of.setdefault(line["batch"], set()).add(line["frontend"])
    assert {frontend for seen in frontends_of.values() for frontend in seen} == {0, 1}
    assert any(seen == {0, 1} for seen in frontends_of.values()), frontends_of
    text = metrics_page(server)
    counted = re.findall(
        r'^aegis_inference_requests_total\{code="200",frontend="(\d)",[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert {frontend for frontend, _ in counted} == {"0", "1"}
    assert 'aegis_batch_size_count{model="m",replica="0",version="1"}' in text
    assert 'frontend="0",model="m",version="1"' not in text.split("aegis_batch_size")[1][:2000]


def test_a_killed_engine_answers_what_it_held_with_503_and_serves_again(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "frontends = 2")
    engine = pids(server, "replica")[0]
    clients = [Load(server) for _ in range(4)]

    def kill_and_wait() -> None:
        os.kill(engine, signal.SIGKILL)
        wait_for(
            lambda: any(
                e["pid"] == pids(server, "replica")[0] and e["pid"] != engine
                for e in log_events(server, "replica_warm")
            ),
            120,
            "engine not warm again",
        )
        wait_for(lambda: server.status("/v2/health/ready") == 200, 30, "not ready again")
        served = len(answered_by(server))
        wait_for(lambda: len(answered_by(server)) > served + 10, 30, "not serving again")

    run_load(clients, kill_and_wait)
    results = [r for client in clients for r in client.results]
    # The front ends stay up: every request is answered, 503 (retry) while the engine is away.
    assert {status for _, status, _ in results} <= {200, 503}, {r[1] for r in results}
    assert any(status == 503 for _, status, _ in results)
    good = [r[2] for r in results if r[1] == 200]
    assert all(np.allclose(data, expected(X, 1).ravel(), atol=1e-5) for data in good)
    text = metrics_page(server)
    assert sample(text, "aegis_replica_up", "replica", 0) == 1
    assert sample(text, "aegis_replica_restarts_total", "replica", 0) == 1


def test_requests_a_dead_engine_held_but_had_not_started_are_answered_by_another_engine(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 2"), "replicas = 2\nfrontends = 1"
    )
    engine = pids(server, "replica")[0]
    clients = [Load(server) for _ in range(8)]

    def stop_then_kill() -> None:
        # Stopped, engine 0 starts no batch: what the front end sends it from now on waits there
        # unstarted, while engine 1 keeps serving.
        os.kill(engine, signal.SIGSTOP)
        served = len(answered_by(server))
        wait_for(lambda: len(answered_by(server)) > served + 50, 60, "engine 1 not serving")
        os.kill(engine, signal.SIGKILL)
        wait_for(lambda: log_events(server, "engine_lost"), 30, "engine loss not seen")
        served = len(answered_by(server))
        wait_for(lambda: len(answered_by(server)) > served + 20, 30, "not serving after it")

    run_load(clients, stop_then_kill)
    results = [r for client in clients for r in client.results]
    # Only the requests of the batch it was running (2 rows, one batch at a time) fail, with 503;
    # those it held unstarted are answered by engine 1.
    failed = [r for r in results if r[1] != 200]
    assert len(failed) <= 2 and {r[1] for r in failed} <= {503}, failed
    [lost] = log_events(server, "engine_lost")
    assert lost["not_started"] >= 1 and lost["running"] == len(failed), lost
    good = [r[2] for r in results if r[1] == 200]
    assert all(np.allclose(data, expected(X, 1).ravel(), atol=1e-5) for data in good)


def test_a_killed_front_end_loses_at_most_its_connections_and_is_restarted(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "frontends = 2")
    victim = pids(server, "frontend")[1]
    clients = [Load(server) for _ in range(4)]
    killed_at: list[float] = []

    def kill_and_wait() -> None:
        killed_at.append(time.monotonic())
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: any(
                e.get("frontend") == 1 and e["pid"] != victim
                for e in log_events(server, "replica_warm")
            ),
            60,
            "front end not back",
        )
        served = len([e for e in answered_by(server) if e["frontend"] == 1])
        wait_for(
            lambda: len([e for e in answered_by(server) if e["frontend"] == 1]) > served,
            30,
            "front end 1 not serving again",
        )

    run_load(clients, kill_and_wait)
    results = [r for client in clients for r in client.results]
    failed = [r for r in results if r[1] != 200]
    assert len(failed) <= len(clients), failed
    assert all(r[1] == 0 and abs(r[0] - killed_at[0]) < 5 for r in failed), failed
    text = metrics_page(server)
    assert sample(text, "aegis_frontend_up", "frontend", 1) == 1
    assert sample(text, "aegis_frontend_restarts_total", "frontend", 1) == 1


def test_reload_and_admin_changes_reach_the_engine_and_lose_nothing_under_load(
    serve: ServerFactory, model_file: Path, tmp_path: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 8"),
        f'frontends = 2\nadmin_token_file = "{token_file(tmp_path)}"',
    )
    clients = [Load(server) for _ in range(3)]

    def reload() -> None:
        replace_model(model_file, seed=2)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: len(log_events(server, "replica_reloaded")) == 1, 120, "no reload")

    run_load(clients, reload)
    results = [r for client in clients for r in client.results]
    assert {status for _, status, _ in results} == {200}, [r for r in results if r[1] != 200][:3]
    # Only the model file changed: the engine does not read its own settings as a change.
    assert log_events(server, "config_reload_partial") == []
    for _ in range(10):  # fresh connections: both front ends serve the new version
        status, body = infer(server, X)
        assert status == 200
        np.testing.assert_allclose(body["outputs"][0]["data"], expected(X, 2).ravel(), atol=1e-5)
    assert admin(server, "/v2/repository/models/m/unload") == (200, {})
    wait_for(lambda: infer(server, X)[0] == 404 and infer(server, X)[0] == 404, 10, "unload")
    assert admin(server, "/v2/repository/models/m/load") == (200, {})
    wait_for(lambda: infer(server, X)[0] == 200 and infer(server, X)[0] == 200, 10, "load")


def test_sigterm_stops_front_ends_then_engines_leaving_no_process_or_shared_memory(
    serve: ServerFactory, model_file: Path
) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "frontends = 2")
    frontends = list(pids(server, "frontend").values())
    engines = list(pids(server, "replica").values())
    assert infer(server, X)[0] == 200
    # Front ends run no model: torch is not even mapped into them.
    assert not any(maps(pid, "libtorch") for pid in frontends)
    assert all(maps(pid, "libtorch") for pid in engines)
    assert server.stop(timeout_s=30) == 0, server.log()
    assert not [pid for pid in frontends + engines if Path(f"/proc/{pid}").exists()]
    assert set(os.listdir("/dev/shm")) <= shm_before
    exited = log_events(server, "replica_exited")
    order = ["frontend" if "frontend" in e else "engine" for e in exited]
    assert order == ["frontend", "frontend", "engine"], exited
