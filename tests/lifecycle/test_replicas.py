"""Several replicas behind one port, as real processes: `aegis serve` with `[server] replicas`."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from tests.conftest import ServerFactory
from tests.support.admin import admin, token_file
from tests.support.config import model_table, server_config
from tests.support.frontends import pids
from tests.support.logs import log_events
from tests.support.metrics import metrics_page
from tests.support.notify import NotifySocket
from tests.support.served_mlp import Load, X, expected, infer, replace_model, run_load
from tests.support.server import ServerProcess, start_server
from tests.support.waiting import wait_for


def served_counts(server: ServerProcess, total: int) -> dict[str, float]:
    """200s by replica once all `total` are counted: a request is counted just after its reply."""
    end = time.monotonic() + 10
    while sum((counts := served_by_replica(metrics_page(server))).values()) < total:
        assert time.monotonic() < end, f"{total} requests not counted: {counts}"
        time.sleep(0.05)
    return counts


def served_by_replica(text: str, code: str = "200") -> dict[str, float]:
    pattern = re.compile(r"^aegis_inference_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = pattern.match(line)
        if match and f'code="{code}"' in match["labels"]:
            replica = re.search(r'replica="(\d+)"', match["labels"])
            assert replica, line
            counts[replica.group(1)] = counts.get(replica.group(1), 0) + float(match["value"])
    return counts


def sample(text: str, name: str, replica: str) -> float:
    match = re.search(rf'^{name}\{{replica="{replica}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for replica {replica} not in the scrape"
    return float(match.group(1))


@pytest.mark.parametrize("replicas", [2, 3])
def test_fresh_connections_reach_every_replica_and_one_scrape_counts_them_all(
    serve: ServerFactory, model_file: Path, replicas: int
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), f"replicas = {replicas}")
    assert len(pids(server, "replica")) == replicas
    clients = [Load(server, limit_count=40) for _ in range(4)]
    # cast: mypy refuses to use join()'s None, which this list only collects to join them all.
    run_load(clients, lambda: [cast(object, client.join(120)) for client in clients], settle_s=0)
    statuses = [status for client in clients for _, status, _ in client.results]
    assert statuses == [200] * 160
    counts = served_counts(server, 160)
    assert set(counts) == {str(i) for i in range(replicas)}, counts
    assert sum(counts.values()) == 160
    assert all(count > 0 for count in counts.values()), counts


def test_keep_alive_connections_opened_at_once_are_spread(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "replicas = 2")
    connections = 32
    barrier = threading.Barrier(connections, timeout=30)
    held: list[http.client.HTTPConnection] = []
    statuses: list[int] = []
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    )

    def one() -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        held.append(connection)
        barrier.wait()
        connection.request("POST", "/v2/models/m/infer", body=body)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(connections)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert statuses == [200] * connections
        # One request per connection, all still open: the counts are where the connections went.
        counts = served_counts(server, connections)
    finally:
        for connection in held:
            connection.close()
    assert sum(counts.values()) == connections
    assert set(counts) == {"0", "1"} and min(counts.values()) > 0, counts


def test_a_killed_replica_loses_at_most_its_requests_and_serves_again(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "replicas = 2")
    victim = pids(server, "replica")[1]
    clients = [Load(server) for _ in range(4)]
    killed_at: list[float] = []

    def kill_and_wait() -> None:
        killed_at.append(time.monotonic())
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                pids(server, "replica")[1] != victim
                and any(
                    e["pid"] == pids(server, "replica")[1]
                    for e in log_events(server, "replica_warm")
                )
            ),
            120,
            "replica 1 not warm again",
        )
        before = served_by_replica(metrics_page(server)).get("1", 0)
        wait_for(
            lambda: served_by_replica(metrics_page(server)).get("1", 0) > before,
            30,
            "replica 1 not serving again",
        )

    run_load(clients, kill_and_wait)
    results = sorted(r for client in clients for r in client.results)
    failed = [r for r in results if r[1] != 200]
    # A request the killed replica held is lost (its connection is reset); none other is.
    assert len(failed) <= len(clients), failed
    assert all(r[1] == 0 for r in failed), failed
    assert all(abs(r[0] - killed_at[0]) < 5 for r in failed), failed
    assert all(np.allclose(r[2], expected(X, 1).ravel(), atol=1e-5) for r in results if r[1] == 200)
    text = metrics_page(server)
    assert sample(text, "aegis_replica_up", "1") == 1
    assert sample(text, "aegis_replica_restarts_total", "1") == 1
    assert server.status("/v2/health/ready") == 200


def test_sighup_rolls_a_reload_through_the_replicas_under_load(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "replicas = 2")
    clients = [Load(server) for _ in range(3)]

    def reload() -> None:
        replace_model(model_file, seed=2)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: len(log_events(server, "replica_reloaded")) == 2, 120, "no rolling reload")

    run_load(clients, reload)
    results = [r for client in clients for r in client.results]
    assert {status for _, status, _ in results} == {200}, [r for r in results if r[1] != 200][:3]
    reloaded = [event["replica"] for event in log_events(server, "replica_reloaded")]
    assert reloaded == [0, 1]
    # Only the model file changed: no replica reads its own start (`--bind` included) as a change.
    assert log_events(server, "config_reload_partial") == []
    # Both replicas now answer with the new version, over fresh connections.
    new = expected(X, 2).ravel()
    for _ in range(20):
        status, body = infer(server, X)
        assert status == 200
        np.testing.assert_allclose(body["outputs"][0]["data"], new, atol=1e-5)


def test_admin_unload_and_load_reach_every_replica(
    serve: ServerFactory, model_file: Path, tmp_path: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 8"),
        f'replicas = 3\nadmin_token_file = "{token_file(tmp_path)}"',
    )
    assert admin(server, "/v2/repository/models/m/unload") == (200, {})
    assert {infer(server, X)[0] for _ in range(30)} == {404}
    replace_model(model_file, seed=3)
    assert admin(server, "/v2/repository/models/m/load") == (200, {})
    for _ in range(30):
        status, body = infer(server, X)
        assert status == 200
        np.testing.assert_allclose(body["outputs"][0]["data"], expected(X, 3).ravel(), atol=1e-5)
    status, body = admin(server, "/v2/repository/models/other/load")
    assert status == 404 and "other" in body["error"]


def test_sigterm_stops_every_replica_and_leaves_no_process(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "replicas = 3")
    started = list(pids(server, "replica").values())
    assert len(started) == 3 and all(Path(f"/proc/{pid}").exists() for pid in started)
    assert server.stop(timeout_s=30) == 0, server.log()
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert len(log_events(server, "replica_exited")) == 3


def test_systemd_hears_ready_once_when_every_replica_is_warm(
    tmp_path: Path, artifacts: dict[str, Path], notify_socket: NotifySocket
) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(
        server_config(tmp_path, model_table("m", artifacts["mlp.pt2"]), "replicas = 3")
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    server = start_server(config, tmp_path / "server.log", env)
    notify_socket.server = server
    try:
        server.wait_ready(180)
        wait_for(lambda: any("READY=1" in m for m, _ in notify_socket.messages), 10, "no READY=1")
        warm = log_events(server, "replica_warm")
        time.sleep(1.5)  # a watchdog period
    finally:
        code = server.stop(timeout_s=30)
    time.sleep(0.3)
    assert code == 0, server.log()
    texts = [message for message, _ in notify_socket.messages]
    ready = [(t, r) for t, r in notify_socket.messages if "READY=1" in t]
    assert len(ready) == 1, texts
    assert ready[0][1] == 200, "READY=1 arrived while readiness still said 503"
    assert "on 3 replicas" in ready[0][0]
    assert len(warm) == 3
    before = texts[: texts.index(ready[0][0])]
    assert any(t.startswith("STATUS=replica 2: warming m:1") for t in before), before
    after = texts[texts.index(ready[0][0]) :]
    assert "WATCHDOG=1" in after and "STOPPING=1" in after, after


def test_a_replica_that_keeps_failing_is_reported_while_the_others_serve(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"), "replicas = 2")
    started = pids(server, "replica")
    model_file.write_bytes(b"not a model")  # replica 1 cannot start again from here on
    os.kill(started[1], signal.SIGKILL)
    clients = [Load(server) for _ in range(2)]
    run_load(
        clients,
        lambda: wait_for(
            lambda: log_events(server, "replica_failing"), 180, "replica 1 never reported"
        ),
        settle_s=0,
    )
    results = [r for client in clients for r in client.results]
    # Replica 0 served throughout (a request replica 1 held when it was killed may be lost).
    assert len([r for r in results if r[1] != 200]) <= len(clients)
    assert len(results) > 50
    text = metrics_page(server)
    assert sample(text, "aegis_replica_failing", "1") == 1
    assert sample(text, "aegis_replica_up", "1") == 0
    assert sample(text, "aegis_replica_up", "0") == 1
    assert log_events(server, "replica_failing")[0]["replica"] == 1
    assert server.status("/v2/health/ready") == 200
