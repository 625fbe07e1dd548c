"""The chart, rendered by Helm's engine and validated against the Kubernetes schemas, through
tests/k8s/helm_tool.py in the tier's venv (AEGIS_K8S_PYTHON, set by tests/k8s/run_tier.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, cast

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts/aegis"
TOOL = Path(__file__).with_name("helm_tool.py")
# An older Kubernetes GKE still offers (the chart declares >= 1.28) and a newer one.
KUBE_VERSIONS = ("1.30.0", "1.33.0")
TIMEOUT_S = 120


class RenderError(Exception):
    """Helm refused the values or a template failed; the message is Helm's."""


def _python() -> str:
    python = os.environ.get("AEGIS_K8S_PYTHON")
    if not python:
        raise RuntimeError("run this tier with tests/k8s/run_tier.sh (AEGIS_K8S_PYTHON is unset)")
    return python


def render(
    values: dict[str, Any], name: str = "aegis", namespace: str = "serving"
) -> dict[str, str]:
    """{template path: manifest text} for `values` over the chart's defaults."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as stream:
        json.dump(values, stream)
        stream.flush()
        done = subprocess.run(
            [_python(), str(TOOL), "render", str(CHART), stream.name, name, namespace],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    if not done.stdout.strip():
        raise RuntimeError(f"helm_tool.py render failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout)
    if "error" in answer:
        raise RenderError(answer["error"])
    return {path: text for path, text in answer["manifests"].items() if text.strip()}


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered YAML manifests (NOTES.txt is not one)."""
    found: list[dict[str, Any]] = []
    for path, text in manifests.items():
        if path.endswith((".yaml", ".yml")):
            found += [document for document in yaml.safe_load_all(text) if document]
    return found


def validate(manifests: dict[str, str], kube_version: str) -> list[dict[str, str]]:
    texts = [text for path, text in manifests.items() if path.endswith((".yaml", ".yml"))]
    done = subprocess.run(
        [_python(), str(TOOL), "validate", kube_version],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    return cast("list[dict[str, str]]", json.loads(done.stdout))


def lint() -> dict[str, Any]:
    done = subprocess.run(
        [_python(), str(TOOL), "lint", str(CHART)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    return cast("dict[str, Any]", json.loads(done.stdout))


def ci_values(name: str) -> dict[str, Any]:
    """One of the chart's ci/ values files (what README's GKE steps install)."""
    loaded = yaml.safe_load((CHART / "ci" / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def find(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [item for item in found if item["kind"] == kind]
    assert len(matches) == 1, f"{len(matches)} objects of kind {kind}"
    return matches[0]
