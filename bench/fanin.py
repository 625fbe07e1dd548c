"""Front ends feeding one engine: CPU per request by role, and requests/s by process layout.

One run loads Aegis four ways on the same cores with the same client (wrk, c=64, V2 JSON, one
row per request), the four layouts interleaved in each round so load from elsewhere on the host
falls on all of them alike:
- `single`: one process (`replicas = 1`, `frontends = 0`);
- `replicas-2`: two replicas, each its own HTTP server and model (`replicas = 2`);
- `frontends-1`, `frontends-2`: one engine behind one or two front ends.
Each process's CPU time (utime + stime from /proc over the window) is summed by role
(front end, engine, replica, supervisor) and divided by the requests answered: CPU per request
by role moves far less with other load than requests/s. Beside them, the bare HTTP stack
(Hypercorn + uvloop + the V2 body parse, `http_ceiling.py`) on one process, the ceiling that a
single process's CPU per request is compared with.

The servers may run on every core listed in --server-cores (all of them by default: the point of
front ends is to use more cores than one); wrk runs on --client-core. On a 2-core machine the
client and the servers share a core, so the requests/s compare layouts, not machines.

    .venv/bin/python bench/fanin.py [--models tiny,compute] [--rounds 3] [--warmup 2]
        [--window 8] [--server-cores 0,1] [--client-core 1] [--frontends 1,2]
        [--out bench/out/fanin]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
import psutil
from serving import aegis, http_ceiling
from serving.launch import Launch, Server
from serving.load import run_wrk, wait_ready
from serving.payload import make_payload
from serving.procs import Fleet, log
from serving.run import REPO, ensure_wrk, machine

BENCH = Path(__file__).resolve().parent
CONCURRENCY = 64


def roles(server: Server) -> dict[int, str]:
    """pid -> role of the server's processes, from the supervisor's `replica_started` lines."""
    started = [
        json.loads(line)
        for line in server.log.read_text().splitlines()
        if '"replica_started"' in line
    ]
    if not started:
        return {server.proc.pid: "single"}
    with_frontends = any("frontend" in event for event in started)
    found = {server.proc.pid: "supervisor"}
    for event in started:  # a later start of the same process replaces the earlier
        if "frontend" in event:
            found[event["pid"]] = "frontend"
        else:
            found[event["pid"]] = "engine" if with_frontends else "replica"
    return found


def cpu_by_role(pids: dict[int, str]) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds by role: of whole processes, and of their main threads alone (the event
    loop's: the rest is the model's threads, torch's own included, and the log writer)."""
    totals: dict[str, float] = {}
    loops: dict[str, float] = {}
    for pid, role in pids.items():
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            main = next(thread for thread in process.threads() if thread.id == pid)
        except psutil.NoSuchProcess:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
        loops[role] = loops.get(role, 0.0) + main.user_time + main.system_time
    return totals, loops


def load_round(server: Server, layout: str, args: argparse.Namespace, model: str) -> dict[str, Any]:
    target = server.targets[0]
    run_wrk(server.port, target, CONCURRENCY, args.warmup, args.work, args.client_core)
    pids = roles(server)
    before, loops_before = cpu_by_role(pids)
    result = run_wrk(server.port, target, CONCURRENCY, args.window, args.work, args.client_core)
    after, loops_after = cpu_by_role(pids)
    replies = result["requests"] - result["non2xx"]
    seconds = result["duration_us"] / 1e6
    cpu = {role: after[role] - before.get(role, 0.0) for role in after}
    loops = {role: loops_after[role] - loops_before.get(role, 0.0) for role in loops_after}
    row = {
        "model": model,
        "layout": layout,
        "rps": replies / seconds,
        "replies": replies,
        "errors": result["non2xx"] + result["socket_errors"] + result["timeouts"],
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "cpu_us_per_request": {
            role: 1e6 * value / replies if replies else None for role, value in cpu.items()
        },
        "cpu_us_per_request_total": 1e6 * sum(cpu.values()) / replies if replies else None,
        "loop_cpu_us_per_request": {
            role: 1e6 * value / replies if replies else None for role, value in loops.items()
        },
    }
    per_role = "  ".join(
        f"{role} {value:.0f} (loop {row['loop_cpu_us_per_request'][role]:.0f})"
        for role, value in sorted(row["cpu_us_per_request"].items())
        if value
    )
    log(
        f"{model:8s} {layout:12s} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.2f}"
        f"  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  cpu/request us: {per_role}"
    )
    return row


def layouts(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(name, replicas, frontends) of each layout measured."""
    found = [("single", 1, 0), ("replicas-2", 2, 0)]
    found += [(f"frontends-{count}", 1, count) for count in args.frontends]
    return found


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    fleet = Fleet()
    launch = Launch(fleet, work, artifacts, cores=args.server_cores)
    started_on = machine()
    rows: list[dict[str, Any]] = []
    try:
        for model in args.models:
            payload = make_payload(model, artifacts)
            servers: dict[str, Server] = {}
            for name, replicas, frontends in layouts(args):
                servers[name] = aegis.start(launch, model, payload, 1024, replicas, frontends)
            servers["http-ceiling"] = http_ceiling.start(launch, model, payload)
            for server in servers.values():
                for target in server.targets:
                    wait_ready(server, target, payload)
            for number in range(1, args.rounds + 1):
                log(f"{model}: round {number}")
                for name, server in servers.items():
                    rows.append({"round": number, **load_round(server, name, args, model)})
            for server in servers.values():
                fleet.stop(server.proc)
    finally:
        fleet.stop_all()
    return {
        "machine": started_on,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "concurrency": CONCURRENCY,
        "server_cores": args.server_cores,
        "client_core": args.client_core,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="tiny,compute")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--server-cores", default=f"0-{(os.cpu_count() or 1) - 1}")
    parser.add_argument("--client-core", default=str((os.cpu_count() or 1) - 1))
    parser.add_argument("--frontends", default="1,2")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "fanin")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.frontends = [int(count) for count in args.frontends.split(",")]
    out: Path = args.out.resolve()
    args.work = out / "work"
    ensure_wrk()
    report = measure(args)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    log(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
