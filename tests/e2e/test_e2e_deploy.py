"""Deploy with the real playbook over real ssh into a booted systemd host, then operate it.

The tests run in file order against one deployment, as an operator would: deploy (an MLP and a
CNN), deploy again, restart, infer, reload a changed model, check a change with --check, push a
release that cannot become ready (and adds a config key, a drop-in change and an artifact), lose
the controller in the middle of a rollout and rerun it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest

from tests.e2e.artifacts import (
    CNN_INPUT,
    INPUTS,
    OUTPUTS,
    cnn_images,
    expected,
    export_cnn,
    export_linear,
)
from tests.e2e.conftest import PlaybookRun, Tier, ansible_playbook, started_playbook
from tests.e2e.harness import REPO, Container, UnixHTTPConnection, booted_container, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODEL = "tiny"
MODEL_ON_HOST = "/opt/aegis/models/tiny/1/model.pt2"
CNN = "cnn"
CNN_ON_HOST = "/opt/aegis/models/cnn/1/model.pt2"
IMAGES = cnn_images(3, seed=7)
STATE = "var/lib/aegis-deploy"
AWS_CREDENTIALS_ON_HOST = "/etc/aegis/aws-credentials"
AWS_SECRET = "e2e-secret-that-must-stay-in-its-file"
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
    cnn_src: Path
    first_run: PlaybookRun

    def deploy(
        self,
        log_name: str,
        extra_vars: dict[str, object] | None = None,
        options: list[str] | None = None,
    ) -> PlaybookRun:
        return ansible_playbook(
            self.tier,
            self.container,
            "ansible/deploy.yml",
            self.inventory,
            log_name,
            extra_vars,
            options=options,
        )

    def host_file(self, path: str) -> Path:
        return self.container.root / path.lstrip("/")

    def live_release(self) -> Path:
        return (self.container.root / "opt/aegis/current").readlink()

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
        cnn_src = export_cnn(container.workdir / "controller/cnn.pt2", seed=1)
        credentials = container.workdir / "controller/aws-credentials"
        credentials.write_text(
            f"[default]\naws_access_key_id = AKIAE2E\naws_secret_access_key = {AWS_SECRET}\n"
        )
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
                "aegis_appliance_unready_window_s": 2,
                # Two engines behind two front ends on the one port: restart, reload and rollback
                # with them.
                "aegis_appliance_replicas": 2,
                "aegis_appliance_frontends": 2,
                "aegis_appliance_aws_region": "eu-west-3",
                "aegis_appliance_aws_endpoint_url": "http://127.0.0.1:9000",
                "aegis_appliance_aws_shared_credentials_file": AWS_CREDENTIALS_ON_HOST,
                "aegis_appliance_aws_shared_credentials_src": str(credentials),
                "aegis_appliance_model_files": [
                    {"src": str(model_src), "dest": MODEL_ON_HOST},
                    {"src": str(cnn_src), "dest": CNN_ON_HOST},
                ],
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
                    },
                    {
                        "name": CNN,
                        "version": "1",
                        "model_path": CNN_ON_HOST,
                        "runtime": "torch",
                        "device": "cpu",
                        "max_batch_size": 4,
                        "warmup_iters": 1,
                    },
                ],
            },
        )
        try:
            first = ansible_playbook(
                tier, container, "ansible/deploy.yml", inventory, "deploy-1-fresh"
            )
            assert first.returncode == 0, first.output[-6000:]
            yield Deployment(tier, container, inventory, model_src, cnn_src, first)
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


def test_a_cnn_warms_up_and_answers_under_the_unit(deployment: Deployment) -> None:
    # oneDNN builds its convolution kernels at run time: under MemoryDenyWriteExecute=yes this
    # model fails at warmup with "could not create a primitive".
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [len(IMAGES), *CNN_INPUT],
                "datatype": "FP32",
                "data": [
                    v for image in IMAGES for channel in image for row in channel for v in row
                ],
            }
        ]
    }
    status, meta = deployment.container.http("GET", f"/v2/models/{CNN}")
    assert status == 200, meta
    assert isinstance(meta, dict)
    body["inputs"][0]["name"] = meta["inputs"][0]["name"]
    status, reply = deployment.container.http("POST", f"/v2/models/{CNN}/infer", body)
    assert status == 200, reply
    assert isinstance(reply, dict)
    got = [float(value) for value in reply["outputs"][0]["data"]]
    assert close(got, expected(deployment.cnn_src, IMAGES))


def test_unit_limits_and_journal_priorities(deployment: Deployment) -> None:
    ssh = deployment.container.ssh
    assert ssh("systemctl show -p LimitNOFILE --value aegis").stdout.strip() == "65536"
    # The service gets it as its soft limit too, up to the hard limit of the container's PID 1.
    pattern = re.compile(r"^Max open files\s+(\d+)\s+(\d+)", re.MULTILINE)
    init = pattern.search(ssh("cat /proc/1/limits").stdout)
    files = pattern.search(ssh(f"cat /proc/{deployment.main_pid()}/limits").stdout)
    assert init and files
    assert int(files.group(1)) == int(files.group(2)) == min(65536, int(init.group(2)))
    assert ssh("systemctl show -p MemoryDenyWriteExecute --value aegis").stdout.strip() == "no"
    # Each line is filed at its level: request lines at info, never above it.
    lines = ssh("journalctl -u aegis -o json --no-pager", 60, check=False)
    entries = [json.loads(line) for line in lines.stdout.splitlines() if line.startswith("{")]
    infers = [e for e in entries if '"event":"infer"' in str(e.get("MESSAGE", ""))]
    assert infers and {e["PRIORITY"] for e in infers} == {"6"}, entries[-3:]
    warnings = ssh("journalctl -u aegis -p warning --no-pager -o cat").stdout
    assert '"event":"infer"' not in warnings


def test_s3_settings_reach_the_service_and_the_secret_stays_in_its_file(
    deployment: Deployment,
) -> None:
    ssh = deployment.container.ssh
    environ = ssh(f"tr '\\0' '\\n' < /proc/{deployment.main_pid()}/environ").stdout.splitlines()
    assert "AWS_REGION=eu-west-3" in environ
    assert "AWS_ENDPOINT_URL=http://127.0.0.1:9000" in environ
    assert f"AWS_SHARED_CREDENTIALS_FILE={AWS_CREDENTIALS_ON_HOST}" in environ
    for path in ("/etc/aegis/aws.env", AWS_CREDENTIALS_ON_HOST):
        assert ssh(f"stat -c '%U:%G %a' {path}").stdout.split() == ["root:aegis", "640"], path
    # The service can read its credentials; nobody else can, and the secret is nowhere else.
    readable_by = f"runuser -u {{}} -- cat {AWS_CREDENTIALS_ON_HOST}"
    assert AWS_SECRET in ssh(readable_by.format("aegis")).stdout
    assert ssh(readable_by.format("nobody"), check=False).returncode != 0
    assert AWS_SECRET not in deployment.first_run.output
    assert (
        AWS_SECRET
        not in ssh("systemctl show aegis; cat /etc/aegis/aegis.toml /etc/aegis/aws.env").stdout
    )
    assert AWS_SECRET not in ssh("journalctl -u aegis --no-pager -o cat").stdout


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


def test_check_mode_shows_a_change_and_changes_nothing(deployment: Deployment) -> None:
    config = deployment.host_file("/etc/aegis/aegis.toml").read_bytes()
    pid = deployment.main_pid()
    run = deployment.deploy(
        "deploy-3-check", {"aegis_appliance_max_request_bytes": 1 << 20}, ["--check", "--diff"]
    )
    assert run.returncode == 0, run.output[-6000:]
    assert run.recap(deployment.container.name)["changed"] > 0
    assert (
        "-max_request_bytes = 67108864" in run.output
        and "+max_request_bytes = 1048576" in run.output
    )
    assert deployment.host_file("/etc/aegis/aegis.toml").read_bytes() == config
    assert deployment.main_pid() == pid
    assert AWS_SECRET not in run.output, "--diff must not show the credentials"
    assert not deployment.host_file(f"/{STATE}/pending.json").exists()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_release_that_cannot_become_ready_is_rolled_back_with_its_config(
    deployment: Deployment,
) -> None:
    """The bad release adds a config key the live release refuses, a new artifact and a drop-in
    change: all of it must go back, or the old release cannot even start."""
    container = deployment.container
    managed = [
        "/etc/aegis/aegis.toml",
        "/etc/systemd/system/aegis.service",
        "/etc/systemd/system/aegis.service.d/10-ansible.conf",
        MODEL_ON_HOST,
    ]
    before = {path: sha256(deployment.host_file(path)) for path in managed}
    live = deployment.live_release()
    changed_model = export_linear(container.workdir / "model-bad.pt2", seed=3)
    bad = deployment.deploy(
        "deploy-4-unready-release",
        {
            "aegis_appliance_wheel": str(deployment.tier.unready_wheel),
            "aegis_appliance_extra_config": {"server": {"e2e_release_marker": 1}},
            "aegis_appliance_watchdog_s": 90,
            "aegis_appliance_model_files": [
                {"src": str(changed_model), "dest": MODEL_ON_HOST},
                {"src": str(deployment.cnn_src), "dest": CNN_ON_HOST},
            ],
            "aegis_appliance_gate_timeout_s": 60,
        },
    )
    assert bad.returncode != 0, "the playbook must fail the host"
    assert "did not pass the gate" in bad.output and "Rolled back to" in bad.output, bad.output[
        -6000:
    ]
    assert deployment.live_release() == live
    after = {path: sha256(deployment.host_file(path)) for path in managed}
    assert after == before, "config, unit, drop-in and artifact are the old release's again"
    assert "e2e_release_marker" not in deployment.host_file("/etc/aegis/aegis.toml").read_text()
    assert not deployment.host_file(f"/{STATE}/pending.json").exists()
    assert container.ssh("systemctl is-active aegis").stdout.strip() == "active"
    # The console script's shebang names the release's own python: the process says which it is.
    cmdline = container.ssh(f"tr '\\0' ' ' < /proc/{deployment.main_pid()}/cmdline").stdout
    assert cmdline.startswith(f"{live}/venv/bin/python"), cmdline
    status, reply = deployment.infer()
    assert status == 200, reply
    assert close(inference_output(reply), expected(deployment.model_src, ROWS))
    # And the old release starts again on what was put back (ExecStartPre checks the config).
    container.ssh("systemctl restart aegis", timeout=360)
    assert container.http("GET", "/v2/health/ready")[0] == 200


def test_a_rollout_cut_off_by_a_lost_controller_is_finished_by_a_rerun(
    deployment: Deployment,
) -> None:
    container = deployment.container
    live = deployment.live_release()
    pending = deployment.host_file(f"/{STATE}/pending.json")
    next_wheel: dict[str, object] = {"aegis_appliance_wheel": str(deployment.tier.next_wheel)}
    with started_playbook(
        deployment.tier,
        container,
        "ansible/deploy.yml",
        deployment.inventory,
        "deploy-5-cut-off",
        next_wheel,
    ) as controller:
        # The controller dies once the host is switched, before it could gate it.
        wait_until(
            "the switch to the next release",
            lambda: pending.exists() and deployment.live_release() != live,
            600,
            interval=0.05,
        )
        controller.send_signal(signal.SIGKILL)
    switched_to = deployment.live_release()
    assert pending.exists(), "the host knows a rollout is under way"
    rerun = deployment.deploy("deploy-6-rerun", next_wheel)
    assert rerun.returncode == 0, rerun.output[-6000:]
    assert "was cut off" in rerun.output, rerun.output[-6000:]
    assert not pending.exists()
    assert deployment.live_release() == switched_to
    cmdline = container.ssh(f"tr '\\0' ' ' < /proc/{deployment.main_pid()}/cmdline").stdout
    assert cmdline.startswith(f"{switched_to}/venv/bin/python"), "the next release runs"
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
    template = REPO / "ansible/roles/aegis_appliance/templates/tpu.conf.j2"
    rendered = jinja2.Template(template.read_text(), keep_trailing_newline=True).render(
        ansible_managed="rendered by tests/e2e",
        # What a v4 host (accel nodes) and a v5e/v6e host (VFIO groups) have, together.
        aegis_appliance__tpu_device_classes=["char-accel", "char-vfio"],
        aegis_appliance__tpu_device_nodes=["/dev/accel0", "/dev/vfio/0"],
        aegis_appliance_tpu_group="aegis-tpu",
    )
    (scratch / "aegis.service.d/tpu.conf").write_text(rendered)
    offline = "--offline=yes --root=/var/tmp/tpu-root"
    tpu = exposure(ssh(f"systemd-analyze security --no-pager {offline} aegis.service").stdout)
    deployment.tier.record(f"exposure: cpu {cpu} (running unit), tpu {tpu} (with tpu.conf)")
    assert cpu <= EXPOSURE_CPU_MAX
    assert tpu <= EXPOSURE_TPU_MAX
