"""The chart, rendered by Helm's own engine: every object valid against the Kubernetes schemas
(offline, strict), TPU placement as GKE needs it, and values.schema.json refusing bad values."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, cast, get_args

import pytest
import tomllib

from appliance.config.runtime_table import runtime_names
from appliance.config.schema import CpuFallback, Device, PaddingCheck
from tests.k8s.helm import (
    CHART,
    KUBE_VERSIONS,
    RenderError,
    ci_values,
    find,
    lint,
    objects,
    render,
    validate,
)

pytestmark = pytest.mark.k8s

MODEL = {"name": "mlp", "version": "1", "model_path": "gs://models/mlp/1/model.pt2"}
EVERYTHING = {
    "models": [MODEL],
    "grpc": {"enabled": True},
    "autoscaling": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "metrics": {"podMonitoring": {"enabled": True}, "serviceMonitor": {"enabled": True}},
    "gcsFuse": {"models": {"enabled": True, "bucket": "models"}},
    "serviceAccount": {"gcpServiceAccount": "aegis@project.iam.gserviceaccount.com"},
}
CASES = {
    "defaults": {},
    "everything": EVERYTHING,
    "tpu-v5e-1x1": ci_values("tpu-v5e-1x1-values.yaml"),
    "tpu-v6e-2x4": ci_values("tpu-v6e-2x4-values.yaml"),
}
CUSTOM_KINDS = {"PodMonitoring", "ServiceMonitor"}


def container(found: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(found, "Deployment")["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    return cast("dict[str, Any]", only)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid_for_kubernetes(case: str, kube_version: str) -> None:
    results = validate(render(CASES[case]), kube_version)
    assert results
    for result in results:
        expected = "no schema" if result["kind"] in CUSTOM_KINDS else "valid"
        assert result["result"] == expected, result


def test_helm_lint_passes_strictly() -> None:
    assert lint()["errors"] == []


@pytest.mark.parametrize(
    ("case", "accelerator", "topology", "chips"),
    [
        ("tpu-v5e-1x1", "tpu-v5-lite-podslice", "1x1", 1),
        ("tpu-v6e-2x4", "tpu-v6e-slice", "2x4", 8),
    ],
)
def test_tpu_pod_lands_on_its_node_pool_with_every_chip(
    case: str, accelerator: str, topology: str, chips: int
) -> None:
    found = objects(render(CASES[case]))
    pod = find(found, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": accelerator,
        "cloud.google.com/gke-tpu-topology": topology,
    }
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    resources = container(found)["resources"]
    assert resources["requests"]["google.com/tpu"] == chips
    assert resources["limits"]["google.com/tpu"] == chips
    assert container(found)["image"].endswith(f"-{CASES[case]['image']['flavor']}")
    # Engines follow the chips: the appliance's "auto" finds them; the config does not pin a count.
    config = tomllib.loads(find(found, "ConfigMap")["data"]["aegis.toml"])
    assert config["server"].get("replicas", "auto") == "auto"


def test_pod_is_ready_only_when_warm_and_drains_before_it_is_killed() -> None:
    values = {"server": {"shutdownGraceS": 40, "unreadyWindowS": 8}, "preStopSleepSeconds": 6}
    found = objects(render(values))
    pod = find(found, "Deployment")["spec"]["template"]["spec"]
    aegis = container(found)
    assert aegis["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert aegis["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert aegis["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = aegis["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # maxStartupSeconds
    assert aegis["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "6"]
    assert pod["terminationGracePeriodSeconds"] > 6 + 40
    server = tomllib.loads(find(found, "ConfigMap")["data"]["aegis.toml"])["server"]
    assert (server["shutdown_grace_s"], server["unready_window_s"]) == (40, 8)
    strategy = find(found, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_models_from_values_become_the_config_file_and_check_config_passes(tmp_path: Path) -> None:
    models = ci_values("tpu-v6e-2x4-values.yaml")["models"]
    found = objects(render({"models": models}))
    text = find(found, "ConfigMap")["data"]["aegis.toml"]
    assert tomllib.loads(text)["models"] == models
    path = tmp_path / "aegis.toml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_custom_resources_scrape_and_scale_the_pods() -> None:
    found = objects(render(EVERYTHING))
    labels = find(found, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"] for port in container(found)["ports"]}
    assert ports == {"http", "grpc"}
    for kind in ("PodMonitoring", "ServiceMonitor"):
        spec = find(found, kind)["spec"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert spec["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    hpa = find(found, "HorizontalPodAutoscaler")["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "aegis_queue_depth"
    # A pod scaled away and back compiles again: scale-down waits at least a worst-case start.
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 1800
    service_ports = {port["name"]: port["port"] for port in find(found, "Service")["spec"]["ports"]}
    assert service_ports == {"http": 8080, "grpc": 8081}
    account = find(found, "ServiceAccount")["metadata"]["annotations"]
    assert account["iam.gke.io/gcp-service-account"] == "aegis@project.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("values", "grpc_bind", "ports"),
    [
        ({}, ["0.0.0.0:8081"], {"http": 8080, "grpc": 8081}),
        ({"grpc": {"enabled": False}}, [], {"http": 8080}),
    ],
)
def test_grpc_is_served_and_exposed_unless_turned_off(
    values: dict[str, Any], grpc_bind: list[str], ports: dict[str, int]
) -> None:
    found = objects(render({"models": [MODEL], **values}))
    server = tomllib.loads(find(found, "ConfigMap")["data"]["aegis.toml"])["server"]
    # Off means off in the appliance too: its own default would still listen on 8081.
    assert server["grpc_bind"] == grpc_bind
    assert {port["name"]: port["containerPort"] for port in container(found)["ports"]} == ports
    service_ports = {port["name"]: port["port"] for port in find(found, "Service")["spec"]["ports"]}
    assert service_ports == ports


def test_helm_test_pod_infers_against_the_service() -> None:
    found = objects(render({"models": [MODEL]}))
    smoke = [item for item in found if item["kind"] == "Pod"]
    assert [item["metadata"]["annotations"]["helm.sh/hook"] for item in smoke] == ["test"]
    env = {item["name"]: item["value"] for item in smoke[0]["spec"]["containers"][0]["env"]}
    assert env == {"AEGIS_URL": "http://aegis:8080", "AEGIS_MODEL": "mlp", "AEGIS_TIMEOUT_S": "30"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"server": {"port": "8080"}}, "/server/port"),
        ({"server": {"shutdownGraceS": -1}}, "/server/shutdownGraceS"),
        ({"tpu": {"enabled": "yes"}}, "/tpu/enabled"),
        ({"tpu": {"topology": "two-by-four"}}, "/tpu/topology"),
        ({"image": {"flavor": "gpu"}}, "/image/flavor"),
        ({"models": [{"name": "m"}]}, "model_path"),
        (
            {"models": [{"name": "m", "model_path": "gs://b/m", "max_batch_size": 0}]},
            "max_batch_size",
        ),
        ({"compileCache": {"type": "nfs"}}, "/compileCache/type"),
        ({"replicas": 2}, "replicas"),
    ],
)
def test_values_schema_refuses_wrong_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match="schema") as refused:
        render(values)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "tpu": {"enabled": True, "accelerator": "tpu-v5-lite-podslice", "topology": "4x4"},
                "image": {"flavor": "tpu"},
            },
            "multi-host",
        ),
        (
            {"tpu": {"enabled": True, "accelerator": "tpu-v6e-slice", "topology": "1x1"}},
            "image.flavor",
        ),
        ({"tpu": {"enabled": True}, "image": {"flavor": "tpu"}}, "tpu.accelerator"),
        ({"server": {"shutdownGraceS": 5, "unreadyWindowS": 5}}, "unreadyWindowS"),
        ({"compileCache": {"type": "gcsFuse"}}, "compileCache.bucket"),
    ],
)
def test_inconsistent_values_fail_with_the_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(values)


def test_chips_follow_the_topology() -> None:
    for topology, chips in (("1x1", 1), ("2x2", 4), ("2x4", 8), ("2x2x1", 4)):
        values = {
            "tpu": {"enabled": True, "accelerator": "tpu-v5p-slice", "topology": topology},
            "image": {"flavor": "jax"},
        }
        limits = container(objects(render(values)))["resources"]["limits"]
        assert limits["google.com/tpu"] == chips == math.prod(map(int, topology.split("x")))


def test_the_values_schema_takes_every_value_the_config_takes() -> None:
    """A [[models]] key the chart lists by its values takes the same values as aegis.toml:
    a value the appliance serves must not fail at install, nor one it refuses pass."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    model = schema["properties"]["models"]["items"]["properties"]
    config = {
        "runtime": set(runtime_names()),
        "device": set(get_args(Device)),
        "cpu_fallback": set(get_args(CpuFallback)),
        "padding_check": set(get_args(PaddingCheck)),
    }
    assert {key: set(model[key]["enum"]) for key in config} == config
