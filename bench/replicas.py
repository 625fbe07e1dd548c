"""Replicas on this machine: requests/s against `[server] replicas`, Aegis with 2 replicas against
TorchServe with 2 workers, and what a replica's SIGKILL costs.

Unlike compare.py (server on core 0, wrk on core 1), every process here may run on both cores,
servers and wrk alike (`taskset -c 0,1`): replicas are for using every core. Each server gets its
own intra-op threads the way it would be deployed: Aegis splits the cores between its replicas
itself, TorchServe's handler sets one thread per worker.

1. scaling: Aegis JSON at c=64 with replicas = 1 (the single process), 2 and 4, tiny and compute;
2. peers: Aegis replicas = 2 against TorchServe 2 workers (batch 32, 5 ms, as compare.py), the
   same wrk at c=16 and c=64, one run of alternating rounds; with each figure the server's CPU
   time per request (its process tree's), which other load on the host does not move;
3. restart: replicas = 2, tiny, wrk c=16 for 45 s; replica 1 is SIGKILLed after 5 s. The time
   from the kill until replica 1 answers again (its request counter moves, polled every 20 ms)
   and the requests lost (wrk's socket errors and timeouts; non-2xx answers are counted apart).

    .venv/bin/python bench/replicas.py [--window 10] [--out bench/out/replicas]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402
import envs  # noqa: E402
import models  # noqa: E402

CORES = "0,1"
HOST = compare.HOST


def wait_host_ready(server: compare.Server, timeout_s: float = compare.START_TIMEOUT_S) -> None:
    """Every replica warm: readiness answers 200 only then."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.key} exited ({server.proc.returncode})")
        try:
            url = f"http://{HOST}:{server.port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.key} not ready after {timeout_s:.0f} s")


def tree_cpu_s(pid: int) -> float:
    """CPU time (user + system) of `pid` and its live descendants, in seconds."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        total += times.get(current, 0.0)
    return total


def load(
    server: compare.Server, target: compare.Target, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    compare.run_wrk(server.port, target, concurrency, args.warmup, args.work, cores=CORES)
    cpu_before = tree_cpu_s(server.proc.pid)
    result = compare.run_wrk(server.port, target, concurrency, args.window, args.work, cores=CORES)
    cpu_s = tree_cpu_s(server.proc.pid) - cpu_before
    duration_s = result["duration_us"] / 1e6
    served = result["requests"] - result["non2xx"]
    row = {
        "concurrency": concurrency,
        "rps": served / duration_s,
        # What the server spent per request: unlike req/s, not moved by other load on the host.
        "cpu_ms_per_request": 1000 * cpu_s / served if served else None,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": result["non2xx"] + result["socket_errors"] + result["timeouts"],
        "rss_mb": compare.tree_rss_mb(server.proc.pid),
    }
    compare.log(
        f"{server.key:10s} c={concurrency:<3d} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.2f}"
        f"  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  rss {row['rss_mb']:.0f} MB"
        f"  cpu/request {row['cpu_ms_per_request'] or 0:.3f} ms"
    )
    return row


def served(
    launcher: compare.Launcher,
    key: str,
    model: str,
    size: int,
    concurrencies: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    payload = compare.make_payload(model, launcher.artifacts)
    if key == "aegis":
        server = launcher._start_aegis(model, payload, replicas=size)
    else:
        server = launcher._start_torchserve(model, payload, workers=size)
    try:
        target = compare.targets_for(server, payload)[0]
        compare.wait_ready(server, target, payload, args.work)
        if key == "aegis":
            wait_host_ready(server)
        return [
            {"server": key, "model": model, "size": size, **load(server, target, c, args)}
            for c in concurrencies
        ]
    finally:
        launcher.fleet.stop(server.proc)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def replica_served(text: str, replica: str) -> float:
    pattern = rf'^aegis_inference_requests_total\{{code="200",.*replica="{replica}".*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def replica_up(text: str, replica: str) -> bool:
    return f'aegis_replica_up{{replica="{replica}"}} 1.0' in text


def poll(condition: Any, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def restart(launcher: compare.Launcher, args: argparse.Namespace) -> dict[str, Any]:
    payload = compare.make_payload("tiny", launcher.artifacts)
    server = launcher._start_aegis("tiny", payload, replicas=2)
    log_path = args.work / "aegis-tiny-1024-2" / "server.log"
    try:
        target = compare.targets_for(server, payload)[0]
        compare.wait_ready(server, target, payload, args.work)
        wait_host_ready(server)
        started = [
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if '"replica started"' in line
        ]
        victim = [event["pid"] for event in started if event["replica"] == 1][-1]
        outcome: dict[str, Any] = {}

        def kill_and_watch() -> None:
            time.sleep(5.0)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            # Once the supervisor has seen it die, no count of replica 1 can come from it.
            if not poll(lambda: not replica_up(scrape(server.port), "1"), 10):
                return
            before = replica_served(scrape(server.port), "1")
            if poll(lambda: replica_up(scrape(server.port), "1"), 60):
                outcome["kill_to_warm_s"] = round(time.monotonic() - killed, 2)
            if poll(lambda: replica_served(scrape(server.port), "1") > before, 30):
                outcome["kill_to_serving_s"] = round(time.monotonic() - killed, 2)

        watcher = threading.Thread(target=kill_and_watch, daemon=True)
        watcher.start()
        result = compare.run_wrk(server.port, target, 16, 45.0, args.work, cores=CORES)
        watcher.join(60)
        outcome |= {
            "requests": result["requests"],
            "lost": result["socket_errors"] + result["timeouts"],
            "non2xx": result["non2xx"],
            "restarts": log_path.read_text().count('"replica started"') - 2,
        }
        compare.log(f"restart: {outcome}")
        return outcome
    finally:
        launcher.fleet.stop(server.proc)


class UnpinnedLauncher(compare.Launcher):
    def _env(self) -> dict[str, str]:
        # No thread count from outside: each server sets its own, as it would when deployed.
        return {"PYTHONUNBUFFERED": "1"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=2, help="alternating peer rounds")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "replicas")
    parser.add_argument("--skip", default="", help="comma-separated: scaling,peers,restart")
    args = parser.parse_args(argv)
    skip = set(args.skip.split(","))
    out: Path = args.out.resolve()
    args.work = out / "work"
    args.work.mkdir(parents=True, exist_ok=True)
    compare.ensure_wrk()
    if "peers" not in skip:
        envs.ensure("torchserve")
    artifacts = compare.REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    fleet = compare.Fleet()
    launcher = UnpinnedLauncher(fleet, args.work, artifacts, cores=CORES)
    results: dict[str, Any] = {
        "machine": compare.machine(),
        "command": "python bench/replicas.py " + " ".join(argv),
        "window_s": args.window,
    }
    try:
        if "scaling" not in skip:
            results["scaling"] = [
                row
                for model in ("tiny", "compute")
                for size in (int(n) for n in args.replicas.split(","))
                for row in served(launcher, "aegis", model, size, [64], args)
            ]
        if "peers" not in skip:
            # Alternating rounds, so that a change in the host's other load hits both servers.
            results["peers"] = [
                {"round": round_, **row}
                for model in ("tiny", "compute")
                for round_ in range(args.rounds)
                for key in ("aegis", "torchserve")
                for row in served(launcher, key, model, 2, [16, 64], args)
            ]
        if "restart" not in skip:
            results["restart"] = restart(launcher, args)
    finally:
        fleet.stop_all()
        (out / "results.json").write_text(json.dumps(results, indent=2))
    compare.log(f"results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
