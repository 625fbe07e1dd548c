"""Deploy with the real playbook over real ssh into a booted systemd host, then operate it.

The tests run in file order against one deployment, as an operator would: deploy, deploy again,
restart, infer, reload a changed model, push a release that cannot become ready.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.artifacts import INPUTS, OUTPUTS, expected, export_linear
from tests.e2e.conftest import PlaybookRun, Tier, ansible_playbook
from tests.e2e.harness import REPO, Container, UnixHTTPConnection, booted_container, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODEL = "tiny"
MODEL_ON_HOST = "/opt/aegis/models/tiny/1/model.pt2"
ROWS = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0], [0.25, -3.0, 1.5, -0.5]]
EXPOSURE_CPU_MAX = 1.5
EXPOSURE_TPU_MAX = 2.5
INFER_BODY = {
    "inputs": [
        {
            "name": "input__0",
            "shape": [len(ROWS), INPUTS],
            "datatype": "FP32",
            "data": [value for row in ROWS for value in row],
        }
    ]
}


@dataclass
class Deployment:
    tier: Tier
    container: Container
    inventory: Path
    # The controller's copy of the artifact that aegis_appliance_model_files pushes.
    model_src: Path
    first_run: PlaybookRun

    def deploy(self, log_name: str, extra_vars: dict[str, str] | None = None) -> PlaybookRun:
        return ansible_playbook(
            self.tier, self.container, "ansible/deploy.yml", self.inventory, log_name, extra_vars
        )

    def main_pid(self) -> int:
        return int(self.container.ssh("systemctl show -p MainPID --value aegis").stdout)

    def infer(self, timeout: float = 10) -> tuple[int, object]:
        return self.container.http("POST", f"/v2/models/{MODEL}/infer", INFER_BODY, timeout)


def inference_output(reply: object) -> list[float]:
    assert isinstance(reply, dict), reply
    (output,) = reply["outputs"]
    assert output["shape"] == [len(ROWS), OUTPUTS]
    return [float(value) for value in output["data"]]


def close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(a - b) <= 1e-4 for a, b in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def deployment(tier: Tier) -> Iterator[Deployment]:
    with booted_container(f"{tier.prefix}-deploy", tier.rootfs) as container:
        model_src = export_linear(container.workdir / "controller/model.pt2", seed=1)
        inventory = container.workdir / "inventory.json"
        container.inventory(
            inventory,
            {
                "aegis_tpu_runtime_flavor": "cpu",
                "aegis_tpu_runtime_wheelhouse": str(tier.runtime_wheels),
                "aegis_appliance_wheel": str(tier.app_wheel),
                "aegis_appliance_wheelhouse": str(tier.app_wheels),
                "aegis_appliance_shutdown_grace_s": 10,
                "aegis_appliance_start_timeout_s": 300,
                "aegis_appliance_model_files": [{"src": str(model_src), "dest": MODEL_ON_HOST}],
                "aegis_appliance_models": [
                    {
                        "name": MODEL,
                        "version": "1",
                        "model_path": MODEL_ON_HOST,
                        "runtime": "torch",
                        "device": "cpu",
                        "max_batch_size": 8,
                        "max_queue_delay_ms": 1.0,
                        "warmup_iters": 1,
                        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, 4]}],
                        "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 2]}],
                    }
                ],
            },
        )
        try:
            first = ansible_playbook(
                tier, container, "ansible/deploy.yml", inventory, "deploy-1-fresh"
            )
            assert first.returncode == 0, first.output[-6000:]
            yield Deployment(tier, container, inventory, model_src, first)
        finally:
            journal = container.ssh("journalctl -u aegis --no-pager -o cat", 60, check=False)
            (tier.logs / "aegis-journal.log").write_text(journal.stdout + journal.stderr)


def test_first_deploy_serves(deployment: Deployment) -> None:
    assert deployment.first_run.recap(deployment.container.name)["changed"] > 0
    status, _ = deployment.container.http("GET", "/v2/health/ready")
    assert status == 200


def test_second_run_changes_nothing(deployment: Deployment) -> None:
    pid = deployment.main_pid()
    second = deployment.deploy("deploy-2-again")
    assert second.returncode == 0, second.output[-6000:]
    recap = second.recap(deployment.container.name)
    assert recap["changed"] == 0, second.output[-6000:]
    assert recap["failed"] == 0
    assert deployment.main_pid() == pid, "an unchanged deploy must not restart the service"


def test_service_is_active_and_confined(deployment: Deployment) -> None:
    ssh = deployment.container.ssh
    assert ssh("systemctl is-active aegis").stdout.strip() == "active"
    status = ssh(f"cat /proc/{deployment.main_pid()}/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = ssh("id -u aegis").stdout.strip()
    assert fields["Uid"].split()[:2] == [uid, uid], "runs as the aegis user"
    assert uid != "0"
    assert int(fields["CapEff"], 16) == 0, "no capabilities"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2", "syscall filter on"
    # Hardening must not cost speed: with /proc/cpuinfo hidden, torch runs unvectorized kernels.
    assert "Error in cpuinfo" not in ssh("journalctl -u aegis --no-pager -o cat").stdout


def test_restart_blocks_until_ready(deployment: Deployment) -> None:
    before = deployment.main_pid()
    started = time.monotonic()
    deployment.container.ssh("systemctl restart aegis", timeout=360)
    took = time.monotonic() - started
    status, body = deployment.container.http("GET", "/v2/health/ready")
    assert status == 200, body
    assert deployment.main_pid() != before
    deployment.tier.record(f"systemctl restart aegis (Type=notify, until warm): {took:.1f}s")


def test_inference_from_the_host_matches_the_model(deployment: Deployment) -> None:
    status, reply = deployment.infer()
    assert status == 200, reply
    assert close(inference_output(reply), expected(deployment.model_src, ROWS))


class Client(threading.Thread):
    """Inference in a loop over one keep-alive connection, bounded in count and time."""

    def __init__(self, container: Container, limit: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.container = container
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.outputs: list[list[float]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        payload = json.dumps(INFER_BODY).encode()
        connection = UnixHTTPConnection(self.container.http_socket, timeout=10)
        try:
            while (
                not self.stop.is_set()
                and len(self.outputs) + len(self.failures) < self.limit
                and time.monotonic() < self.deadline
            ):
                try:
                    connection.request("POST", f"/v2/models/{MODEL}/infer", body=payload)
                    response = connection.getresponse()
                    raw = response.read()
                except OSError as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    continue
                if response.status != 200:
                    self.failures.append(f"{response.status}: {raw[:200]!r}")
                    continue
                self.outputs.append(inference_output(json.loads(raw)))
        finally:
            connection.close()


def test_reload_swaps_a_changed_model_without_failed_requests(deployment: Deployment) -> None:
    container = deployment.container
    old = expected(deployment.model_src, ROWS)
    changed = export_linear(container.workdir / "model-v2.pt2", seed=2)
    new = expected(changed, ROWS)
    assert not close(old, new)
    pid = deployment.main_pid()
    client = Client(container, limit=20000, seconds=120)
    client.start()
    try:
        wait_until("the client's first answers", lambda: len(client.outputs) >= 20, 30)
        # What an operator does: put the new artifact in place (atomically), then reload.
        target = container.root / MODEL_ON_HOST.lstrip("/")
        shutil.copyfile(changed, target.with_suffix(".new"))
        shutil.copymode(target, target.with_suffix(".new"))
        shutil.chown(target.with_suffix(".new"), "root", target.group())
        target.with_suffix(".new").replace(target)
        container.ssh("systemctl reload aegis", timeout=60)
        reloaded = time.monotonic()
        wait_until(
            "the changed model to answer",
            lambda: bool(client.outputs) and close(client.outputs[-1], new),
            90,
        )
        swapped_at = len(client.outputs)
        swap_seconds = time.monotonic() - reloaded
        wait_until("more answers after the swap", lambda: len(client.outputs) > swapped_at + 50, 30)
    finally:
        client.stop.set()
        client.join(30)
    assert not client.failures, client.failures[:5]
    assert deployment.main_pid() == pid, "a reload keeps the process"
    assert any(close(output, old) for output in client.outputs)
    assert all(close(output, old) or close(output, new) for output in client.outputs)
    # Later deploys push the controller's copy: keep it what the host now serves.
    shutil.copyfile(changed, deployment.model_src)
    deployment.tier.record(
        f"reload under load: {len(client.outputs)} requests, 0 failed;"
        f" new model answering {swap_seconds:.1f}s after systemctl reload returned"
    )


def test_a_release_that_cannot_become_ready_is_rolled_back(deployment: Deployment) -> None:
    container = deployment.container
    live = (container.root / "opt/aegis/current").readlink()
    bad = deployment.deploy(
        "deploy-3-unready-release",
        {
            "aegis_appliance_wheel": str(deployment.tier.unready_wheel),
            "aegis_appliance_ready_retries": "10",
            "aegis_appliance_ready_delay_s": "1",
        },
    )
    assert bad.returncode != 0, "the playbook must fail the host"
    assert "Rolled back to" in bad.output, bad.output[-6000:]
    assert (container.root / "opt/aegis/current").readlink() == live
    assert container.ssh("systemctl is-active aegis").stdout.strip() == "active"
    # The console script's shebang names the release's own python: the process says which it is.
    cmdline = container.ssh(f"tr '\\0' ' ' < /proc/{deployment.main_pid()}/cmdline").stdout
    assert cmdline.startswith(f"{live}/venv/bin/python"), cmdline
    status, reply = deployment.infer()
    assert status == 200, reply
    assert close(inference_output(reply), expected(deployment.model_src, ROWS))


def exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for aegis\.service: ([0-9.]+)", output)
    assert match, output[-2000:]
    return float(match.group(1))


def test_hardening_exposure_is_within_target(deployment: Deployment) -> None:
    ssh = deployment.container.ssh
    verify = ssh("systemd-analyze verify aegis.service", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    cpu = exposure(ssh("systemd-analyze security --no-pager aegis.service").stdout)
    # The TPU drop-in is installed only with a TPU model: score the unit with it, offline, in a
    # copy of the unit tree (the container's /tmp is its own tmpfs; /var/tmp is on the root).
    scratch = deployment.container.root / "var/tmp/tpu-root/etc/systemd/system"
    shutil.copytree(
        deployment.container.root / "etc/systemd/system/aegis.service.d",
        scratch / "aegis.service.d",
    )
    shutil.copy(deployment.container.root / "etc/systemd/system/aegis.service", scratch)
    shutil.copy(REPO / "systemd/dropins/tpu.conf", scratch / "aegis.service.d")
    offline = "--offline=yes --root=/var/tmp/tpu-root"
    tpu = exposure(ssh(f"systemd-analyze security --no-pager {offline} aegis.service").stdout)
    deployment.tier.record(f"exposure: cpu {cpu} (running unit), tpu {tpu} (with tpu.conf)")
    assert cpu <= EXPOSURE_CPU_MAX
    assert tpu <= EXPOSURE_TPU_MAX
