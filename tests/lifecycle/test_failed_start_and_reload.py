"""A start that fails for any reason exits non-zero with a clear message, promptly; a reload
that fails for any reason keeps the serving version and tells systemd it is ready again."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config, tensor_table
from tests.support.fault_models import Doubles, ReturnsAnotherName, ReturnsANumber
from tests.support.http import call
from tests.support.models import script_pt
from tests.support.notify import NotifySocket
from tests.support.server import start_server

EXIT_BOUND_S = 60.0  # the load itself takes seconds; systemd's start timeout is 30 minutes


def two_outputs(path: Path) -> str:
    return (
        model_table("pair", path, "warmup_iters = 1")
        + tensor_table("inputs", "x", "FP32", [-1, 2])
        + tensor_table("outputs", "y", "FP32", [-1, 2])
        + tensor_table("outputs", "n", "FP32", [-1, 2])
    )


def test_an_unexpected_failure_in_warmup_ends_the_start(tmp_path: Path) -> None:
    """The model returns an int where a tensor is declared: not a failure kind the loader knows,
    which used to leave the process alive saying "loading" for ever."""
    artifact = script_pt(ReturnsANumber(), tmp_path / "number.pt")
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, two_outputs(artifact)))
    started = time.monotonic()
    server = start_server(config, tmp_path / "server.log")
    try:
        code = server.process.wait(EXIT_BOUND_S)
    finally:
        server.stop()
    took = time.monotonic() - started
    log = server.log()
    print(f"\nFIGURES failed start: exit {code} {took:.1f} s after the process started")
    assert code == 1, log[-3000:]
    assert "model 'pair' version '1'" in log and "start_failed" in log, log[-3000:]


def test_a_failed_reload_keeps_the_old_version_and_tells_systemd_ready(
    tmp_path: Path,
    notify_socket: NotifySocket,
) -> None:
    artifact = tmp_path / "m.pt"
    script_pt(Doubles(), artifact)
    models = (
        model_table("m", artifact, "warmup_iters = 1")
        + tensor_table("inputs", "x", "FP32", [-1, 2])
        + tensor_table("outputs", "y", "FP32", [-1, 2])
    )
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, models))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    server = start_server(config, tmp_path / "server.log", env)
    body = json_infer("x", "FP32", [1, 2], [1.0, 2.0])
    try:
        server.wait_ready(120)
        # The new artifact's output does not map onto the declared one.
        script_pt(ReturnsAnotherName(), tmp_path / "staging.pt").replace(artifact)
        server.process.send_signal(signal.SIGHUP)
        end = time.monotonic() + 60
        while time.monotonic() < end and "model_reload_failed" not in server.log():
            time.sleep(0.05)
        end = time.monotonic() + 10
        texts: list[str] = []
        while time.monotonic() < end:
            texts = [message for message, _ in notify_socket.messages]
            reloading = [i for i, t in enumerate(texts) if t.startswith("RELOADING=1")]
            if reloading and any("READY=1" in t for t in texts[reloading[-1] :]):
                break
            time.sleep(0.05)
        reply = call(server, "POST", "/v2/models/m/infer", body)
        ready = call(server, "GET", "/v2/health/ready").status
    finally:
        code = server.stop()
    log = server.log()
    assert "model_reload_failed" in log, log[-3000:]
    reloading = [i for i, t in enumerate(texts) if t.startswith("RELOADING=1")]
    assert reloading, texts
    assert any("READY=1" in t and "reload failed" in t for t in texts[reloading[-1] :]), texts
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [2.0, 4.0], reply
    assert ready == 200
    assert code == 0
