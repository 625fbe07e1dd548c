"""A single Aegis process against its two ceilings: CPU per request, interleaved on one core.

Four servers on --server-core, each one process, loaded in turn by wrk (c=64, V2 JSON, one row
per request, the tiny model) from --client-core, round after round, so load from elsewhere falls
on all four alike:
- `http-ceiling`: bare Hypercorn + uvloop parsing each body, a fixed reply (`http_ceiling.py`);
- `batched-ceiling`: that plus what batching itself needs: the row as numpy, a future awaited
  while a batch gathers, the model on one thread, the reply encoded (`batched_ceiling.py`);
- `aegis`: `aegis serve`, one process, no gRPC listener, every request's access line written;
- `aegis-errors`: the same with `access_log = "errors"`.
The figure judged is each server's CPU time (utime + stime from /proc over the window) per answered
request, and its ratio to the HTTP ceiling's in the same round: the front-end issue's budget is
1.4x. The batched ceiling splits what Aegis spends beyond the HTTP stack into what any batching
server on it spends and what Aegis adds (checks, deadlines, metrics, the log line, the disconnect
watch, its batcher's bookkeeping).

    .venv/bin/python bench/ceilings.py [--rounds 6] [--warmup 2] [--window 6]
        [--out bench/out/ceilings]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
from serving import aegis, http_ceiling
from serving.launch import Launch, Server
from serving.load import cpu_per_request, wait_ready
from serving.payload import make_payload
from serving.procs import Fleet, log
from serving.run import REPO, commit, ensure_wrk, machine

MODEL = "tiny"
CONCURRENCY = 64
CEILING = "http-ceiling"


def start_all(launch: Launch) -> dict[str, Server]:
    payload = make_payload(MODEL, launch.artifacts)
    servers = {
        CEILING: http_ceiling.start(launch, MODEL, payload),
        "batched-ceiling": http_ceiling.start_batched(launch, MODEL, payload),
        "aegis": aegis.start(launch, MODEL, payload, grpc=False),
        "aegis-errors": aegis.start(launch, MODEL, payload, access_log="errors", grpc=False),
    }
    for server in servers.values():
        wait_ready(server, server.targets[0], payload)
    return servers


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=6.0)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ceilings")
    args = parser.parse_args(argv)
    ensure_wrk()
    work: Path = args.out.resolve() / "work"
    work.mkdir(parents=True, exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    fleet = Fleet()
    launch = Launch(fleet, work, artifacts, cores=args.server_core)
    started_on = machine()
    rounds: list[dict[str, float]] = []
    try:
        servers = start_all(launch)
        for number in range(1, args.rounds + 1):
            figures = {}
            for name, server in servers.items():
                cpu_us, _ = cpu_per_request(
                    server,
                    server.targets[0],
                    CONCURRENCY,
                    args.warmup,
                    args.window,
                    work,
                    args.client_core,
                )
                figures[name] = cpu_us
            rounds.append(figures)
            log(
                f"round {number}: "
                + ", ".join(
                    f"{name} {cpu:.0f} us ({cpu / figures[CEILING]:.2f}x)"
                    for name, cpu in figures.items()
                )
            )
    finally:
        fleet.stop_all()
    ratios = {
        name: statistics.median(figures[name] / figures[CEILING] for figures in rounds)
        for name in rounds[0]
    }
    report: dict[str, Any] = {
        "machine": started_on,
        "commit": commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_us_per_request": rounds,
        "median_ratio_to_http_ceiling": ratios,
    }
    (args.out.resolve() / "results.json").write_text(json.dumps(report, indent=2))
    medians = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items())
    log(f"median ratio to the HTTP ceiling: {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
