"""Helm's engine and the Kubernetes schemas, run in the tier's own venv (.venv-k8s).

    helm_tool.py render CHART VALUES.json NAME NAMESPACE  -> {"manifests": {template: text}}
                                                          or {"error": "..."} (exit 1)
    helm_tool.py lint CHART                               -> Helm's lint result
    helm_tool.py validate KUBE_VERSION < MANIFESTS.json   -> [{"kind", "name", "result"}]

The tests (in the dev venv) call it as a subprocess: its packages stay out of the dev venv.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import kubernetes_validate
import yaml
from helm_python import chart


def render(path: str, values_file: str, name: str, namespace: str) -> int:
    with open(values_file) as stream:
        values = json.load(stream)
    try:
        manifests = chart.Chart.load(path).render(values=values, name=name, namespace=namespace)
    except Exception as error:  # the engine's own errors carry Helm's message
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps({"manifests": manifests}))
    return 0


def validate(version: str) -> int:
    """Each object of each manifest against the schemas of `version`, strictly (no unknown fields).
    result: "valid", "no schema" (a custom resource), or the error."""
    results: list[dict[str, Any]] = []
    for text in json.load(sys.stdin):
        for document in yaml.safe_load_all(text):
            if not document:
                continue
            entry = {"kind": document.get("kind"), "name": document["metadata"]["name"]}
            try:
                kubernetes_validate.validate(document, version, strict=True)
                entry["result"] = "valid"
            except kubernetes_validate.SchemaNotFoundError:
                entry["result"] = "no schema"
            except kubernetes_validate.ValidationError as error:
                entry["result"] = f"{error.message} at {'/'.join(map(str, error.path))}"
            results.append(entry)
    print(json.dumps(results))
    return 0


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "render":
        return render(*args)
    if command == "lint":
        print(json.dumps(chart.lint(args[0], strict=True)))
        return 0
    if command == "validate":
        return validate(args[0])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
