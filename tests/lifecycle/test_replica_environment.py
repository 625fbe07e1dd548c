"""What each replica process gets on a 4- and an 8-chip TPU host: the supervisor is fed a fake PCI
tree, the replicas it starts are real processes, and their environment is read from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.frontends import pids
from tests.support.http import free_port
from tests.support.pci import tpu_host
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.parametrize("chips", [4, 8])
def test_each_replica_owns_one_chip(tmp_path: Path, artifacts: dict[str, Path], chips: int) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            shutdown_grace_s = 2
            [storage]
            cache_dir = "{tmp_path / "cache"}"
            [xla]
            compilation_cache_dir = "{tmp_path / "xla"}"
            [[models]]
            name = "t"
            model_path = "{artifacts["mlp.pt2"]}"
            runtime = "tpu"
            device = "tpu"
            """
        )
    )
    root = tpu_host(tmp_path / "sys", chips)
    port = free_port()
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from appliance.config import load_config
        from appliance.chips import tpu_chips
        from appliance.lifecycle.replicas import plan_replicas
        from appliance.lifecycle.supervisor import ConfigSource, run_supervisor
        from appliance.logs import configure_logging

        configure_logging()
        config = load_config({str(config)!r})
        plans = plan_replicas(config, tpu_chips(Path({str(root)!r})), cpus=16)
        source = ConfigSource(config, {str(config)!r}, ())
        sys.exit(run_supervisor(source, plans, ["127.0.0.1:{port}"]))
        """
    )
    systemd_socket = str(tmp_path / "systemd-notify.sock")
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": systemd_socket, "WATCHDOG_PID": "1"},
            start_new_session=True,
        )
    server = ServerProcess(process, "127.0.0.1", port, log_path)
    try:
        wait_for(lambda: len(pids(server, "replica")) == chips, 60, "replicas not started")
        processes = pids(server, "replica")
        envs = {index: environment(pid) for index, pid in processes.items()}
        assert server.stop(timeout_s=30) == 0, server.log()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    notify_sockets = set()
    for index, env in sorted(envs.items()):
        assert env["TPU_VISIBLE_CHIPS"] == str(index)
        assert env["TPU_PROCESS_BOUNDS"] == "1,1,1"
        assert env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
        assert env["TPU_PROCESS_PORT"] == str(8476 + index)
        assert env["OMP_NUM_THREADS"] == str(16 // chips)
        assert env["PROMETHEUS_MULTIPROC_DIR"].endswith(f"replica-{index}")
        # Only the supervisor speaks to systemd: each replica reports to the supervisor.
        assert env["NOTIFY_SOCKET"] != systemd_socket
        assert "WATCHDOG_PID" not in env
        notify_sockets.add(env["NOTIFY_SOCKET"])
    assert len(notify_sockets) == chips
    started = [line for line in server.log().splitlines() if '"replica_started"' in line]
    assert all(f'"chip":"0000:00:{4 + i:02x}.0"' in started[i] for i in range(chips)), started
    time.sleep(0.2)
    assert not [pid for pid in processes.values() if Path(f"/proc/{pid}").exists()]
