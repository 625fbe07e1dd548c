"""The chart's Deployment run for real: `podman kube play --network host` with the image from
`make image` (cpu flavor), the model in a fake-gcs-server bucket. The pod syncs, is not ready until
warm, answers V2 inference as a non-root user on a read-only root, drains on `podman kube down`
within its grace period, and comes back with its compile-cache volume.

On the CPU the torch runtime compiles nothing: the cache volume is proven mounted, writable by the
pod's user and kept across pods, and the cold and warm starts are recorded, not compared.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.k8s.helm import REPO, find, objects, render
from tests.k8s.pod import (
    Pod,
    Start,
    kube_down,
    playable,
    played,
    podman,
    stop,
    wait_for_event,
    watch_start,
)
from tests.support.gcs import admin_client, emulator
from tests.support.http import LOOPBACK, free_port, request

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

BUCKET = "models"
OBJECT = "mlp/1/model.pt2"
SHUTDOWN_GRACE_S = 10
START_TIMEOUT_S = 300
# Enough warmup passes that the window between "listening" and "warm" is seen from outside.
WARMUP_ITERS = 300


@dataclass
class Tier:
    archive: Path
    image: str
    prefix: str
    logs: Path

    def record(self, line: str) -> None:
        with (self.logs / "results.txt").open("a") as results:
            results.write(line + "\n")


@dataclass
class Release:
    name: str
    port: int
    objects: list[dict[str, Any]]
    tier: Tier
    workdir: Path

    def deployment(self) -> dict[str, Any]:
        return find(self.objects, "Deployment")

    def config_text(self) -> str:
        return str(find(self.objects, "ConfigMap")["data"]["aegis.toml"])


@pytest.fixture(scope="module")
def tier() -> Iterator[Tier]:
    names = ("AEGIS_K8S_IMAGE_ARCHIVE", "AEGIS_K8S_PREFIX", "AEGIS_K8S_LOGS")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.fail(f"run this tier with tests/k8s/run_tier.sh (unset: {', '.join(missing)})")
    archive = Path(os.environ["AEGIS_K8S_IMAGE_ARCHIVE"])
    loaded = podman("load", "--quiet", "--input", str(archive))
    image = loaded.strip().rsplit(" ", 1)[-1]  # "Loaded image: NAME"
    try:
        yield Tier(
            archive, image, os.environ["AEGIS_K8S_PREFIX"], Path(os.environ["AEGIS_K8S_LOGS"])
        )
    finally:
        podman("rmi", "--force", image, check=False)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.support.models import mlp_pt2

    artifact = mlp_pt2(tmp_path_factory.mktemp("artifact") / "model.pt2")
    with emulator() as url:
        admin_client(url).create_bucket(BUCKET).blob(OBJECT).upload_from_filename(str(artifact))
        yield url


@pytest.fixture(scope="module")
def release(tier: Tier, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    name = f"{tier.prefix}-{secrets.token_hex(2)}"
    port = free_port()
    repository, tag = tier.image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        # Host networking: the pod's port is the host's, so it listens on loopback only.
        "server": {
            "bindHost": LOOPBACK,
            "port": port,
            "shutdownGraceS": SHUTDOWN_GRACE_S,
            "unreadyWindowS": 2,
        },
        "grpc": {"port": free_port()},
        "env": [{"name": "STORAGE_EMULATOR_HOST", "value": bucket}],
        "models": [
            {
                "name": "mlp",
                "version": "1",
                "model_path": f"gs://{BUCKET}/{OBJECT}",
                "max_batch_size": 8,
                "warmup_iters": WARMUP_ITERS,
            }
        ],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    }
    found = objects(render(values, name=name))
    workdir = tmp_path_factory.mktemp("release")
    try:
        yield Release(name, port, found, tier, workdir)
    finally:
        for volume in (name, f"{name}-compile-cache"):
            podman("volume", "rm", "--force", volume, check=False)


@dataclass
class Started:
    pod: Pod
    start: Start


@pytest.fixture(scope="module")
def first_pod(release: Release) -> Iterator[Started]:
    started = time.monotonic()
    with played(
        playable(release.objects, with_claim=True),
        release.workdir / "first.yaml",
        release.name,
        release.workdir / "first.log",
    ) as pod:
        start = watch_start(release.port, started, START_TIMEOUT_S)
        release.tier.record(f"cold start (kube play to ready): {start.seconds_to_ready:.1f} s")
        yield Started(pod, start)


def infer(port: int) -> dict[str, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": [0.5] * 16}]}
    meta = json.loads(request(LOOPBACK, port, "GET", "/v2/models/mlp").body)
    body["inputs"][0]["name"] = meta["inputs"][0]["name"]
    reply = request(LOOPBACK, port, "POST", "/v2/models/mlp/infer", json.dumps(body).encode())
    assert reply.status == 200, reply
    answer: dict[str, Any] = json.loads(reply.body)
    return answer


def test_pod_syncs_from_the_bucket_and_is_not_ready_until_warm(first_pod: Started) -> None:
    start = first_pod.start
    assert start.live_before_ready, "liveness should answer while the model still warms"
    assert start.ready_codes[0] == 503 and start.ready_codes[-1] == 200, start.ready_codes
    assert set(start.ready_codes[:-1]) == {503}
    # Synced before loaded, loaded before warm, ready last.
    found = wait_for_event(first_pod.pod.log, "ready")
    order = [found.index(name) for name in ("artifact_synced", "model_ready", "ready")]
    assert order == sorted(order), found


def test_pod_answers_v2_inference(first_pod: Started, release: Release) -> None:
    (output,) = infer(release.port)["outputs"]
    assert output["shape"] == [2, 3]
    assert len(output["data"]) == 6


def test_pod_runs_as_non_root_on_a_read_only_root(first_pod: Started) -> None:
    assert first_pod.pod.exec("id", "-u").strip() == "10001"
    status = first_pod.pod.exec("cat", "/proc/1/status")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"10001"}
    with pytest.raises(RuntimeError, match="Read-only file system"):
        podman("exec", first_pod.pod.container, "touch", "/opt/aegis/x")


def test_compile_cache_volume_is_mounted_and_writable_by_the_pod(first_pod: Started) -> None:
    mounts = first_pod.pod.exec("cat", "/proc/self/mounts")
    assert " /var/cache/aegis/xla " in mounts
    first_pod.pod.exec("sh", "-c", "echo first-pod > /var/cache/aegis/xla/written-by-first-pod")


def test_pod_drains_within_its_grace_period_and_exits_cleanly(
    first_pod: Started, release: Release
) -> None:
    grace = release.deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    infer(release.port)
    seconds = stop(release.name, grace)
    release.tier.record(f"drain (SIGTERM to exit): {seconds:.1f} s (grace {grace} s)")
    # Exit status 0 after shutting_down: the app drained and exited by itself (a SIGKILL at the
    # end of the grace period would read 137).
    state = "{{.State.ExitCode}} {{.State.Status}}"
    assert podman("inspect", "--format", state, first_pod.pod.container).split() == ["0", "exited"]
    assert seconds < grace
    wait_for_event(first_pod.pod.log, "shutting_down")
    kube_down(first_pod.pod.yaml_file)
    assert podman("ps", "--all", "--filter", f"pod={release.name}-pod-0", "--quiet") == ""


def test_pod_comes_back_with_its_compile_cache_volume(first_pod: Started, release: Release) -> None:
    if podman("ps", "--all", "--filter", f"pod={release.name}-pod-0", "--quiet"):
        pytest.fail("the first pod is still there: run the whole module in order")
    started = time.monotonic()
    with played(
        playable(release.objects, with_claim=False),
        release.workdir / "second.yaml",
        release.name,
        release.workdir / "second.log",
    ) as pod:
        start = watch_start(release.port, started, START_TIMEOUT_S)
        release.tier.record(
            f"warm start (kube play to ready, claim kept): {start.seconds_to_ready:.1f} s"
            f" (cold: {first_pod.start.seconds_to_ready:.1f} s; the CPU runtime compiles nothing)"
        )
        assert pod.exec("cat", "/var/cache/aegis/xla/written-by-first-pod").strip() == "first-pod"
        assert infer(release.port)["outputs"]


def test_rendered_config_passes_check_config_in_the_image(release: Release, tier: Tier) -> None:
    config = release.workdir / "aegis.toml"
    config.write_text(release.config_text())
    assert tomllib.loads(config.read_text())["models"][0]["model_path"].startswith("gs://")
    output = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--volume",
        f"{config}:/etc/aegis/aegis.toml:ro",
        tier.image,
        "check-config",
        "/etc/aegis/aegis.toml",
    )
    # A gs:// artifact is not fetched by check-config: the model's table is what is checked here.
    assert "valid (1 model(s), 0 artifact(s) checked)" in output


def test_image_is_labelled_and_its_size_reported(tier: Tier) -> None:
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", tier.image))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert labels["org.opencontainers.image.source"]
    user = podman("image", "inspect", "--format", "{{.Config.User}}", tier.image).strip()
    assert user == "10001:10001"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tier.image))
    tier.record(
        f"image {tier.image}: {size / 1e6:.0f} MB unpacked,"
        f" archive {tier.archive.stat().st_size / 1e6:.0f} MB"
    )
