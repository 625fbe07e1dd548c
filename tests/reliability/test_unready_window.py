"""`[server] unready_window_s`: after SIGTERM, readiness says 503 for that long while new requests
are still served (a load balancer needs a few probe intervals to take the host out), and only then
are connections refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.load import ONE_THREAD
from tests.support.server import running_server

GRACE_S = 8.0
WINDOW_S = 3.0
MLP = json_infer("x", "FP32", [1, 8], [0.5] * 8)


def test_sigterm_keeps_serving_with_readiness_503_for_the_unready_window(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    models = model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0")
    config = server_config(tmp_path, models).replace(
        "shutdown_grace_s = 5", f"shutdown_grace_s = {GRACE_S:g}\nunready_window_s = {WINDOW_S:g}"
    )
    assert f"unready_window_s = {WINDOW_S:g}" in config
    with running_server(config, tmp_path, ONE_THREAD) as server:
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # The signal is handled on the server's event loop: wait for it to be seen.
        while call(server, "GET", "/v2/health/ready", timeout_s=5).status == 200:
            assert time.monotonic() - signalled < 2, "readiness did not turn 503 after SIGTERM"
            time.sleep(0.02)
        during: list[tuple[int, int]] = []  # (readiness, inference) on new connections
        while time.monotonic() - signalled < WINDOW_S - 1.0:
            ready = call(server, "GET", "/v2/health/ready", timeout_s=5).status
            infer = call(server, "POST", "/v2/models/mlp/infer", MLP, timeout_s=5).status
            during.append((ready, infer))
            time.sleep(0.1)
        refused_after = None
        while time.monotonic() - signalled < GRACE_S:
            try:
                call(server, "GET", "/v2/health/ready", timeout_s=5)
            except ConnectionRefusedError:
                refused_after = time.monotonic() - signalled
                break
            time.sleep(0.05)
        code = server.process.wait(GRACE_S + 10)
    assert during and all(pair == (503, 200) for pair in during), during
    assert refused_after is not None, "connections were still taken at the end of the grace period"
    assert refused_after >= WINDOW_S - 0.2, refused_after
    assert code == 0
