#!/usr/bin/env python3
"""The deploy gate of one Aegis host: is what runs the release, serving every model where it should?

Installed by the aegis_appliance role and run by it on the host after a restart or reload:

  aegis-gate --url http://127.0.0.1:8080 --timeout 1800 --release /opt/aegis/releases/R \
      --model NAME:VERSION:DEVICE [--allow-cpu NAME] [--request NAME=JSON] ...

Within --timeout seconds (XLA compiles every batch bucket before the service is ready):
  1. systemd reports the unit active (not failed, not still starting or reloading), and its main
     process runs the release (its command line names the release's venv);
  2. /v2/health/ready answers 200;
  3. each model reports the device it was configured for: a `tpu` model the host could not open
     the chips for serves on the CPU (cpu_fallback = "unavailable") and fails the gate, unless
     --allow-cpu names it;
  4. one inference per model succeeds (zeros of the declared shape, one row; or --request's body);
  5. serving compiled nothing (aegis_xla_compilations_total{phase="serving"} is 0): a compile while
     serving means a shape warmup missed, and each such request stalls for the compile.
Prints one JSON object; exits 0 when the host passed, 1 with the reason when it did not.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

POLL_S = 1.0
REQUEST_TIMEOUT_S = 120.0
ZERO = {"BOOL": False}
_SAMPLE = re.compile(r"^(\w+)\{(.*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class GateFailed(Exception):
    """The host did not pass; the message says which check and why."""


@dataclass(frozen=True)
class Expected:
    name: str
    version: str
    device: str


class Client:
    """HTTP to the service on this host (TLS is not verified: the name is 127.0.0.1)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE

    def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(
                request, timeout=REQUEST_TIMEOUT_S, context=self.tls
            ) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, method: str, path: str, body: object = None) -> Any:
        status, raw = self.call(method, path, body)
        if status != 200:
            raise GateFailed(f"{method} {path}: {status} {raw[:500].decode(errors='replace')}")
        return json.loads(raw)


def systemd_state(unit: str) -> dict[str, str]:
    result = subprocess.run(
        ["systemctl", "show", unit, "--property=ActiveState,SubState,Result,MainPID"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def wait_until_ready(client: Client, unit: str, release: str, deadline: float) -> float:
    """Seconds until the unit was active and ready; GateFailed when it failed or time ran out."""
    started = time.monotonic()
    last = "no answer yet"
    while True:
        # Without a unit (a server not run by systemd), only the HTTP checks apply.
        state = systemd_state(unit) if unit else {"ActiveState": "active", "MainPID": ""}
        active = state.get("ActiveState", "")
        # The role starts the unit before the gate: stopped is as final as failed.
        if active in ("failed", "inactive"):
            raise GateFailed(
                f"{unit} {active} ({state.get('Result')}): see journalctl -u {unit} -b"
            )
        if active == "active":
            try:
                status, raw = client.call("GET", "/v2/health/ready")
            except OSError as error:
                last = f"/v2/health/ready: {error}"
            else:
                if status == 200:
                    check_release(state.get("MainPID", "0"), release)
                    return time.monotonic() - started
                last = f"/v2/health/ready: {status} {raw[:200].decode(errors='replace')}"
        else:
            last = f"{unit} is {active}/{state.get('SubState')}"
        if time.monotonic() >= deadline:
            raise GateFailed(f"not ready in time: {last}")
        time.sleep(POLL_S)


def check_release(main_pid: str, release: str) -> None:
    """The main process runs the release: a switched link alone does not restart old code."""
    if not release or not main_pid:
        return
    try:
        with open(f"/proc/{int(main_pid)}/cmdline", "rb") as stream:
            argv = stream.read().split(b"\0")
    except (OSError, ValueError) as error:
        raise GateFailed(f"cannot read the main process's command line: {error}") from None
    venv = release.rstrip("/") + "/venv/"
    if not argv or not argv[0].decode(errors="replace").startswith(venv):
        shown = b" ".join(argv).decode(errors="replace")[:300]
        raise GateFailed(f"the main process (pid {main_pid}) is not release {release}: {shown}")


def device_kind(reported: str) -> str:
    """The kind of device a model reports: "cpu", "cuda:0" -> cuda, "xla:tpu:0" and "jax:tpu:0"
    -> tpu (and "xla:cpu:0" or "jax:cpu:0", PyTorch/XLA or JAX on the CPU, -> cpu)."""
    parts = reported.split(":")
    return parts[1] if parts[0] in ("xla", "jax") and len(parts) > 1 else parts[0]


def zeros(spec: dict[str, Any]) -> dict[str, Any]:
    """One row of zeros for an input the model declared: [-1, d...] with -1 taken as 1."""
    shape = [1 if dim == -1 else int(dim) for dim in spec["shape"]]
    datatype = spec["datatype"]
    if datatype == "BYTES":
        raise GateFailed(f"input {spec['name']} is BYTES: give the gate a request for it")
    return {
        "name": spec["name"],
        "datatype": datatype,
        "shape": shape,
        "data": [ZERO.get(datatype, 0)] * math.prod(shape),
    }


def check_model(
    client: Client, model: Expected, allow_cpu: bool, request: Any | None
) -> dict[str, Any]:
    path = f"/v2/models/{urllib.parse.quote(model.name, safe='')}"
    path += f"/versions/{urllib.parse.quote(model.version, safe='')}"
    metadata = client.json("GET", path)
    reported = str(metadata.get("parameters", {}).get("device", ""))
    kind = device_kind(reported)
    if kind != model.device and not (allow_cpu and kind == "cpu"):
        hint = (
            " (the TPU could not be opened: see the journal; allow it with cpu_fallback_ok)"
            if model.device == "tpu" and kind == "cpu"
            else ""
        )
        raise GateFailed(
            f"model {model.name}:{model.version} runs on {reported!r}, not {model.device!r}{hint}"
        )
    body = request if request is not None else {"inputs": [zeros(s) for s in metadata["inputs"]]}
    started = time.monotonic()
    status, raw = client.call("POST", path + "/infer", body)
    took_ms = (time.monotonic() - started) * 1000
    if status != 200:
        raise GateFailed(
            f"model {model.name}:{model.version}: smoke inference answered {status}:"
            f" {raw[:500].decode(errors='replace')}"
        )
    outputs = json.loads(raw).get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise GateFailed(f"model {model.name}:{model.version}: smoke inference gave no outputs")
    return {
        "model": model.name,
        "version": model.version,
        "device": reported,
        "smoke_ms": round(took_ms, 1),
    }


def serving_compilations(metrics_text: str) -> dict[str, float]:
    """{"name:version": count} of XLA compilations after warmup, from the /metrics text."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != "aegis_xla_compilations_total":
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        if labels.get("phase") == "serving":
            key = f"{labels.get('model')}:{labels.get('version')}"
            found[key] = found.get(key, 0.0) + float(match.group(3))
    return found


def gate(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    client = Client(args.url)
    waited = wait_until_ready(client, args.unit, args.release, deadline)
    requests = dict(item.split("=", 1) for item in args.request)
    models = [
        check_model(
            client,
            model,
            model.name in args.allow_cpu,
            json.loads(requests[model.name]) if model.name in requests else None,
        )
        for model in args.model
    ]
    status, raw = client.call("GET", "/metrics")
    if status != 200:
        raise GateFailed(f"GET /metrics: {status}")
    compiled = {key: n for key, n in serving_compilations(raw.decode()).items() if n > 0}
    if compiled:
        listed = ", ".join(f"{key} ({n:g})" for key, n in sorted(compiled.items()))
        raise GateFailed(f"XLA compiled while serving, a shape warmup missed: {listed}")
    return {"ok": True, "ready_after_s": round(waited, 1), "models": models}


def _expected(text: str) -> Expected:
    name, sep, rest = text.partition(":")
    version, sep2, device = rest.rpartition(":")
    if not (name and sep and sep2 and version and device):
        raise argparse.ArgumentTypeError(f"expected NAME:VERSION:DEVICE, got {text!r}")
    return Expected(name, version, device)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aegis-gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--unit", default="aegis", help="the systemd unit (default %(default)s; empty: none)"
    )
    parser.add_argument("--timeout", type=float, required=True, help="seconds for all of it")
    parser.add_argument("--release", default="", help="the release the service must be running")
    parser.add_argument(
        "--model", type=_expected, action="append", default=[], help="NAME:VERSION:DEVICE"
    )
    parser.add_argument(
        "--allow-cpu", action="append", default=[], help="a model that may serve on the CPU"
    )
    parser.add_argument(
        "--request", action="append", default=[], help="NAME=JSON: the smoke request for NAME"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = gate(args)
    except GateFailed as error:
        print(json.dumps({"ok": False, "error": str(error)}))
        print(f"aegis-gate: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
