"""Startup order as systemd sees it: STATUS lines while syncing/loading/warming, READY=1 only
once readiness answers 200, watchdog pings, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.config import model_table, server_config
from tests.support.notify import NotifySocket
from tests.support.server import start_server


def test_ready_is_sent_only_when_warm_and_stopping_on_sigterm(
    tmp_path: Path, artifacts: dict[str, Path], notify_socket: NotifySocket
) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(
        server_config(tmp_path, model_table("m", artifacts["mlp.pt2"], "max_batch_size = 64"))
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    server = start_server(config, tmp_path / "server.log", env)
    notify_socket.server = server
    try:
        server.wait_ready(120)
        end = time.monotonic() + 10
        while time.monotonic() < end and not any("READY=1" in m for m, _ in notify_socket.messages):
            time.sleep(0.05)
        time.sleep(0.5)  # a watchdog period or two
    finally:
        code = server.stop()
    time.sleep(0.3)
    assert code == 0, server.log()
    texts = [message for message, _ in notify_socket.messages]
    statuses = [t for t in texts if t.startswith("STATUS=")]
    assert any("syncing m:1" in s for s in statuses), texts
    assert any("loading m:1" in s for s in statuses), texts
    assert any("warming m:1" in s for s in statuses), texts
    ready = [(t, r) for t, r in notify_socket.messages if "READY=1" in t]
    assert len(ready) == 1, texts
    assert ready[0][1] == 200, "READY=1 arrived while readiness still said 503"
    ready_index = texts.index(ready[0][0])
    assert all("READY=1" not in t for t in texts[:ready_index])
    assert not any(t.startswith("STATUS=syncing") for t in texts[ready_index:])
    assert any(t == "WATCHDOG=1" for t in texts[ready_index:]), texts
    assert "STOPPING=1" in texts[ready_index:], texts
