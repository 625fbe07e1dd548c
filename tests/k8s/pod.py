"""The chart's Deployment run for real under podman (`podman kube play --network host`), with the
image from `make image`: what tests/k8s/test_pod.py drives.

Podman differs from a kubelet in two ways this code adapts the rendered YAML to, and nothing else:
with host networking it refuses a containerPort ("PortMappings can only be used with Bridge"),
so the ports are dropped and the probes name the port number; and it runs probes as healthchecks
through systemd timers, which a host without systemd as PID 1 does not have, so the tests poll
the probes' own endpoints from outside instead. Podman 4.3's `kube down` removes a running pod at
once (no SIGTERM, no grace: seen here), so a pod is first stopped as a kubelet stops it (SIGTERM,
then SIGKILL after terminationGracePeriodSeconds), then brought down.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from tests.support.http import LOOPBACK, request

PODMAN_TIMEOUT_S = 120
# What podman kube play accepts of the chart's objects.
PLAYED_KINDS = ("ConfigMap", "PersistentVolumeClaim", "Deployment")


def podman(*args: str, timeout: float = PODMAN_TIMEOUT_S, check: bool = True) -> str:
    done = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ),
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def playable(found: list[dict[str, Any]], with_claim: bool) -> str:
    """The YAML to play: ConfigMap, PVC (only when the claim does not exist yet, as in a cluster
    where it outlives the pod) and the Deployment, adapted as the module says."""
    documents = []
    for item in found:
        if item["kind"] not in PLAYED_KINDS:
            continue
        if item["kind"] == "PersistentVolumeClaim" and not with_claim:
            continue
        if item["kind"] == "Deployment":
            item = yaml.safe_load(yaml.safe_dump(item))
            (container,) = item["spec"]["template"]["spec"]["containers"]
            numbers = {port["name"]: port["containerPort"] for port in container.pop("ports")}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = container[probe]["httpGet"]
                get["port"] = numbers[get["port"]]
        documents.append(item)
    return cast(str, yaml.safe_dump_all(documents))


@dataclass
class Start:
    """One start of the pod, seen from outside through its probe endpoints."""

    seconds_to_ready: float
    ready_codes: list[int] = field(default_factory=list)  # /v2/health/ready, in order
    live_before_ready: bool = False


def probe(port: int, path: str) -> int | None:
    try:
        return request(LOOPBACK, port, "GET", path, timeout_s=2.0).status
    except OSError:
        return None  # not listening yet


def watch_start(port: int, started: float, timeout_s: float, poll_s: float = 0.05) -> Start:
    """Poll readiness (and liveness) until ready answers 200; bounded by `timeout_s`."""
    seen = Start(seconds_to_ready=-1.0)
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        code = probe(port, "/v2/health/ready")
        if code is not None:
            seen.ready_codes.append(code)
            if code == 200:
                seen.seconds_to_ready = time.monotonic() - started
                return seen
            if probe(port, "/v2/health/live") == 200:
                seen.live_before_ready = True
        time.sleep(poll_s)
    raise TimeoutError(
        f"not ready within {timeout_s} s; readiness answered {seen.ready_codes[-5:]}"
    )


@dataclass
class Pod:
    """A played Deployment: its YAML file, its container, and the file its output goes to."""

    yaml_file: Path
    container: str
    log: Path

    def exec(self, *command: str) -> str:
        return podman("exec", self.container, *command)


@contextlib.contextmanager
def played(yaml_text: str, yaml_file: Path, deployment: str, log: Path) -> Iterator[Pod]:
    """kube play the YAML; yields the pod; always brings it down."""
    yaml_file.write_text(yaml_text)
    # conmon writes the container's output there itself: complete even after the pod is gone.
    podman(
        "kube",
        "play",
        "--network",
        "host",
        "--log-driver",
        "k8s-file",
        "--log-opt",
        f"path={log}",
        str(yaml_file),
    )
    try:
        names = podman("ps", "--filter", f"pod={deployment}-pod-0", "--format", "{{.Names}}")
        (container,) = [name for name in names.split() if not name.endswith("-infra")]
        yield Pod(yaml_file, container, log)
    finally:
        kube_down(yaml_file)  # nothing left to do if the test brought it down itself


def events(log: Path) -> list[str]:
    """The app's log events so far (k8s-file lines: TIME STREAM TAG JSON)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        _, _, text = line.partition("{")
        with contextlib.suppress(ValueError):
            found.append(str(json.loads("{" + text).get("event")))
    return found


def wait_for_event(log: Path, name: str, timeout_s: float = 10.0) -> list[str]:
    """The events once `name` is among them; bounded by `timeout_s` (the log lags the app)."""
    deadline = time.monotonic() + timeout_s
    while name not in (found := events(log)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name!r} event within {timeout_s} s; events: {found}")
        time.sleep(0.1)
    return found


def stop(deployment: str, grace_s: int) -> float:
    """SIGTERM to the pod's containers, SIGKILL after `grace_s`; returns the seconds it took."""
    started = time.monotonic()
    podman("pod", "stop", "--time", str(grace_s), f"{deployment}-pod-0", timeout=grace_s + 60)
    return time.monotonic() - started


def kube_down(yaml_file: Path) -> None:
    podman("kube", "down", str(yaml_file), check=False)
