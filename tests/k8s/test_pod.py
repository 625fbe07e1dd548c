"""The chart's Deployment run for real: `podman kube play --network host` with the image from
`make image` (the cpu flavor in `make test`; `make test-k8s FLAVOR=jax` runs the jax one), the
model in a fake-gcs-server bucket. The pod syncs, is not ready until warm, answers V2 inference as
a non-root user on a read-only root, drains on `podman kube down` within its grace period, and
comes back with its compile-cache volume.

The cpu flavor's torch runtime compiles nothing: there the cache volume is proven mounted, writable
by the pod's user and kept across pods, and the cold and warm starts are recorded. The jax flavor
serves the model on JAX's CPU backend, which compiles every bucket: its second pod must read them
from the volume, and spend less time compiling than the first.
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
from tests.support.metrics import scrape

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

BUCKET = "models"
OBJECT = "mlp/1/model.pt2"
SHUTDOWN_GRACE_S = 10
START_TIMEOUT_S = 300
# Enough warmup passes that the window between "listening" and "warm" is seen from outside.
WARMUP_ITERS = 300
BUCKETS = [1, 2, 4, 8]
# What the model's table adds, by image flavor: runtimes that compile per shape show the cache.
FLAVOR_MODEL: dict[str, dict[str, Any]] = {
    "cpu": {},
    "jax": {"runtime": "jax", "device": "cpu", "batch_buckets": BUCKETS},
}
# The device label of flavors whose runtime compiles per shape (and so fills the cache).
COMPILING_DEVICE = {"jax": "jax:cpu:0"}


@dataclass
class Tier:
    archive: Path
    image: str
    prefix: str
    logs: Path
    flavor: str

    @property
    def labels(self) -> dict[str, str] | None:
        """The model's metric labels where its runtime compiles; None where it does not."""
        device = COMPILING_DEVICE.get(self.flavor)
        return None if device is None else {"model": "mlp", "version": "1", "device": device}

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

    @property
    def host(self) -> str:
        return LOOPBACK  # host networking, bound to loopback

    def deployment(self) -> dict[str, Any]:
        return find(self.objects, "Deployment")

    def config_text(self) -> str:
        return str(find(self.objects, "ConfigMap")["data"]["aegis.toml"])


@pytest.fixture(scope="module")
def tier() -> Iterator[Tier]:
    names = ("AEGIS_K8S_IMAGE_ARCHIVE", "AEGIS_K8S_PREFIX", "AEGIS_K8S_LOGS", "AEGIS_K8S_FLAVOR")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.fail(f"run this tier with tests/k8s/run_tier.sh (unset: {', '.join(missing)})")
    archive = Path(os.environ["AEGIS_K8S_IMAGE_ARCHIVE"])
    loaded = podman("load", "--quiet", "--input", str(archive))
    image = loaded.strip().rsplit(" ", 1)[-1]  # "Loaded image: NAME"
    flavor = os.environ["AEGIS_K8S_FLAVOR"]
    if flavor not in FLAVOR_MODEL:
        pytest.fail(f"AEGIS_K8S_FLAVOR={flavor}: this tier runs {', '.join(FLAVOR_MODEL)}")
    try:
        yield Tier(
            archive,
            image,
            os.environ["AEGIS_K8S_PREFIX"],
            Path(os.environ["AEGIS_K8S_LOGS"]),
            flavor,
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
                **FLAVOR_MODEL[tier.flavor],
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
    compile_s: float  # aegis_xla_compile_seconds_sum once ready (0 where nothing compiles)


def compile_seconds(release: Release) -> float:
    """The model's compile time so far, from the pod's own metrics; 0 where nothing compiles."""
    labels = release.tier.labels
    if labels is None:
        return 0.0
    return scrape(release)("aegis_xla_compile_seconds_sum", **labels)


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
        compile_s = compile_seconds(release)
        release.tier.record(
            f"cold start (kube play to ready, {release.tier.flavor}): "
            f"{start.seconds_to_ready:.1f} s, compiling {compile_s:.2f} s"
        )
        yield Started(pod, start, compile_s)


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
        compile_s = compile_seconds(release)
        release.tier.record(
            f"warm start (kube play to ready, claim kept, {release.tier.flavor}): "
            f"{start.seconds_to_ready:.1f} s, compiling {compile_s:.2f} s"
            f" (cold: {first_pod.start.seconds_to_ready:.1f} s, {first_pod.compile_s:.2f} s)"
        )
        assert pod.exec("cat", "/var/cache/aegis/xla/written-by-first-pod").strip() == "first-pod"
        assert infer(release.port)["outputs"]
        labels = release.tier.labels
        if labels is not None:
            value = scrape(release)
            assert value("aegis_xla_cached_compilations_total", **labels) >= len(BUCKETS)
            assert compile_s < first_pod.compile_s


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
