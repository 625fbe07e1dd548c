"""SIGTERM under load loses nothing: readiness turns 503 first (while connections are still
taken), every accepted request completes, then new connections are refused while accepted work
finishes, and the process exits within shutdown_grace_s. The test counts every request.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.fault_models import declared_table
from tests.support.http import call
from tests.support.load import ONE_THREAD, rounds_for, slow_body
from tests.support.server import ServerProcess, running_server

GRACE_S = 12.0  # room for the long request past the listeners' closing, on a busy machine too
CLIENTS = 8
# A request still running when the listeners close. A connect while the listeners are emptied
# (handshakes ignored) is refused at its SYN retry, a second later: the request outlasts that.
LONG_S = 4.0
MLP = json_infer("x", "FP32", [1, 8], [0.5] * 8)


def probe(server: ServerProcess) -> str:
    """'200', '503' or 'refused', on a new connection."""
    try:
        return str(call(server, "GET", "/v2/health/ready", timeout_s=5).status)
    except ConnectionRefusedError:
        return "refused"


def test_sigterm_under_load_loses_no_accepted_request(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    models = model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0") + declared_table(
        "slow", artifacts["slow.pt"], 1, "max_batch_size = 1\ntimeout_ms = 20000\nwarmup_iters = 0"
    )
    config = server_config(tmp_path, models).replace(
        "shutdown_grace_s = 5", f"shutdown_grace_s = {GRACE_S:g}"
    )
    assert f"shutdown_grace_s = {GRACE_S:g}" in config
    with running_server(config, tmp_path, ONE_THREAD) as server:
        long_rounds = rounds_for(server, LONG_S)
        stop_sending = threading.Event()
        outcomes: list[str] = []  # one per request: a status, or what went wrong

        def client() -> None:
            while not stop_sending.is_set():
                try:
                    outcomes.append(str(call(server, "POST", "/v2/models/mlp/infer", MLP).status))
                except OSError as error:  # refused, reset or cut: never acceptable here
                    outcomes.append(f"{type(error).__name__}: {error}")

        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            clients = [pool.submit(client) for _ in range(CLIENTS)]
            long_request = pool.submit(
                call, server, "POST", "/v2/models/slow/infer", slow_body(long_rounds), None, 60
            )
            time.sleep(0.5)  # load and the long request are in flight
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            probes = [probe(server)]
            while probes[-1] == "200" and time.monotonic() - signalled < 2:
                probes.append(probe(server))
            # What a load balancer does on a failed readiness probe: stop sending new work.
            stop_sending.set()
            for future in clients:
                future.result(30)
            while probes[-1] != "refused" and time.monotonic() - signalled < GRACE_S:
                time.sleep(0.02)
                probes.append(probe(server))
            refused_while_busy = not long_request.done()
            long_reply = long_request.result(60)
        code = server.process.wait(GRACE_S + 10)
        took = time.monotonic() - signalled

    accepted = len(outcomes) + 1
    completed = outcomes.count("200") + (long_reply.status == 200)
    print(
        f"\nFIGURES drain: {accepted} requests accepted, {completed} completed, "
        f"readiness probes {probes[0]}->...->{probes[-1]} ({len(probes)} probes), "
        f"exit code {code} {took:.2f} s after SIGTERM (grace {GRACE_S:g} s)"
    )
    assert completed == accepted, ([o for o in outcomes if o != "200"][:5], long_reply)
    first_change = next(p for p in probes if p != "200")
    assert first_change == "503", probes
    assert probes[-1] == "refused", probes
    assert refused_while_busy, "new connections were not refused while accepted work remained"
    assert code == 0
    assert took < GRACE_S, took
