"""Overload: Aegis with a 64-deep queue at 10x that concurrency.

wrk gives the client's view of all responses; Aegis's access log (one JSON line per request, with
status and duration) gives the time to answer each status apart, from arrival at the app to the
reply.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving import aegis
from serving.launch import Launch
from serving.load import run_wrk, wait_ready
from serving.payload import Payload
from serving.procs import log, tree_rss_mb

QUEUE = 64


def access_log_by_status(path: Path, offset: int) -> dict[str, dict[str, float]]:
    """Count and p50 / p99 / max of `duration_ms` per status, from `offset` in the log on."""
    durations: dict[int, list[float]] = {}
    with open(path, "rb") as stream:
        stream.seek(offset)
        for line in stream:
            if b'"event":"infer"' not in line:
                continue
            entry = orjson.loads(line)
            durations.setdefault(entry["status"], []).append(entry["duration_ms"])
    summary = {}
    for status, values in sorted(durations.items()):
        p50, p99 = np.percentile(values, [50, 99], method="higher")
        summary[str(status)] = {
            "count": len(values),
            "p50_ms": float(p50),
            "p99_ms": float(p99),
            "max_ms": max(values),
        }
    return summary


def overload(launch: Launch, payload: Payload, warmup_s: float, window_s: float) -> dict[str, Any]:
    server = aegis.start(launch, "tiny", payload, queue_size=QUEUE)
    target = server.targets[0]
    report: dict[str, Any] = {"max_queue_size": QUEUE}
    try:
        wait_ready(server, target, payload)
        for label, connections in (("baseline", QUEUE), ("overload", QUEUE * 10)):
            run_wrk(server.port, target, connections, warmup_s, launch.work)
            samples: list[float] = []
            stop = threading.Event()

            def sample(into: list[float] = samples, until: threading.Event = stop) -> None:
                while not until.wait(0.25):
                    into.append(tree_rss_mb(server.proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            time.sleep(0.5)  # the warm-up's last lines (its cut-off requests, 499) come first
            offset = server.log.stat().st_size
            sampler.start()
            try:
                result = run_wrk(server.port, target, connections, window_s, launch.work)
            finally:
                stop.set()
                sampler.join()
            time.sleep(0.5)  # the last access-log lines are written after their replies
            duration_s = result["duration_us"] / 1e6
            report[label] = {
                "connections": connections,
                "ok_per_s": (result["requests"] - result["non2xx"]) / duration_s,
                "refused_per_s": result["non2xx"] / duration_s,
                "client_p50_ms": result["p50_us"] / 1000,
                "client_p99_ms": result["p99_us"] / 1000,
                "server_by_status": access_log_by_status(server.log, offset),
                "rss_mb": {
                    "first": samples[0] if samples else None,
                    "max": max(samples) if samples else None,
                    "last": samples[-1] if samples else None,
                },
            }
            log(
                f"overload {label}: c={connections} {report[label]['ok_per_s']:.0f} ok/s, "
                f"{report[label]['refused_per_s']:.0f} refused/s, "
                f"server-side {report[label]['server_by_status']}"
            )
    finally:
        launch.fleet.stop(server.proc)
    return report
