"""Load: wrk on the client core, readiness, and Aegis's batch-size histogram around each window."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from serving.launch import CLIENT_CORE, HOST, Server
from serving.payload import Payload, Target, output_of
from serving.procs import log, tree_cpu_s, tree_rss_mb

START_TIMEOUT_S = 180.0
WRK_SCRIPT = Path(__file__).resolve().parents[1] / "wrk_post.lua"


@dataclass
class Row:
    model: str
    target: str
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    mean_batch: float | None
    rss_mb: float


def post(port: int, target: Target, timeout_s: float = 10.0) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{target.path}", data=target.body, headers=target.headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return (
                response.status,
                response.read(),
                response.headers.get("Inference-Header-Content-Length"),
            )
    except urllib.error.HTTPError as error:
        return error.code, error.read(), None


def wait_ready(server: Server, target: Target, payload: Payload) -> None:
    """Until the server answers the benchmark request correctly; fails fast if it died."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.key} exited ({server.proc.returncode}); see {server.log}")
        try:
            status, body, header_length = post(server.port, target)
        except (OSError, urllib.error.URLError) as error:
            last = str(error)
        else:
            if status == 200:
                if target.check:
                    got = output_of(body, header_length)
                    if not np.allclose(got, payload.expected.reshape(-1), rtol=1e-4, atol=1e-4):
                        raise RuntimeError(f"{target.name} computes a different function: {got}")
                return
            last = f"HTTP {status}: {body[:200]!r}"
            if status in (405, 415, 422):
                # The server is up and refuses the request: waiting will not change that.
                raise RuntimeError(f"{target.name} refuses the benchmark request: {last}")
        time.sleep(0.5)
    raise RuntimeError(f"{server.key} not ready after {START_TIMEOUT_S:.0f} s ({last})")


def run_wrk(
    port: int,
    target: Target,
    concurrency: int,
    seconds: float,
    work: Path,
    cores: str = CLIENT_CORE,
) -> dict[str, Any]:
    body_file = work / f"body-{target.name}.bin"
    body_file.write_bytes(target.body)
    env = {
        **os.environ,
        "WRK_BODY_FILE": str(body_file),
        "WRK_HEADERS": "|".join(f"{name}: {value}" for name, value in target.headers.items()),
    }
    command = [
        "taskset",
        "-c",
        cores,
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"http://{HOST}:{port}{target.path}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
            return result
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def model_samples(port: int, model: str, timeout_s: float = 10.0) -> Iterator[Sample]:
    """The samples of the server's /metrics that carry `model`, every replica's."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model:
                yield sample


def batch_histogram(port: int, model: str) -> tuple[float, float]:
    """(sum, count) of aegis_batch_size for `model`, over every replica."""
    found = {"aegis_batch_size_sum": 0.0, "aegis_batch_size_count": 0.0}
    for sample in model_samples(port, model):
        if sample.name in found:
            found[sample.name] += sample.value
    return found["aegis_batch_size_sum"], found["aegis_batch_size_count"]


def measure(
    server: Server,
    target: Target,
    model: str,
    concurrency: int,
    warmup_s: float,
    window_s: float,
    work: Path,
) -> Row:
    run_wrk(server.port, target, concurrency, warmup_s, work)
    scraped = server.metrics_model
    before = batch_histogram(server.port, scraped) if scraped else None
    result = run_wrk(server.port, target, concurrency, window_s, work)
    mean_batch = None
    if before is not None and scraped:
        after = batch_histogram(server.port, scraped)
        batches = after[1] - before[1]
        mean_batch = (after[0] - before[0]) / batches if batches else None
    duration_s = result["duration_us"] / 1e6
    errors = result["non2xx"] + result["socket_errors"] + result["timeouts"]
    row = Row(
        model=model,
        target=target.name,
        concurrency=concurrency,
        rps=(result["requests"] - result["non2xx"]) / duration_s,
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=errors,
        mean_batch=mean_batch,
        rss_mb=tree_rss_mb(server.proc.pid),
    )
    log(
        f"{model:8s} {target.name:13s} c={concurrency:<4d} {row.rps:9.1f} req/s  "
        f"p50 {row.p50_ms:7.2f}  p99 {row.p99_ms:7.2f} ms  errors {errors}"
        + (f"  batch {mean_batch:.1f}" if mean_batch else "")
    )
    return row


def cpu_per_request(
    server: Server,
    target: Target,
    concurrency: int,
    warmup_s: float,
    window_s: float,
    work: Path,
    client_core: str = CLIENT_CORE,
) -> tuple[float, float]:
    """(the server's CPU us per answered request, requests/s) over one wrk window after a warm-up
    run: utime + stime of its whole process tree, from /proc, over the window."""
    run_wrk(server.port, target, concurrency, warmup_s, work, client_core)
    before = tree_cpu_s(server.proc.pid)
    result = run_wrk(server.port, target, concurrency, window_s, work, client_core)
    spent = tree_cpu_s(server.proc.pid) - before
    replies = result["requests"] - result["non2xx"]
    return 1e6 * spent / replies, replies / (result["duration_us"] / 1e6)
