"""The replica runs of `bench/replicas.py`: scaling, Aegis against TorchServe on two cores, and a
replica's SIGKILL under load (see that file for what each measures)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import envs
import models

from serving import aegis, http_ceiling, torchserve
from serving.launch import HOST, Launch, Server
from serving.load import START_TIMEOUT_S, run_wrk, wait_ready
from serving.payload import Payload, Target, make_payload
from serving.procs import Fleet, log, tree_cpu_s, tree_rss_mb
from serving.run import REPO, ensure_wrk, machine

# The peers each model is served by, two processes each. Two processes of bare Hypercorn (the HTTP
# ceiling: no model, no batching) bound what any Hypercorn server can answer on these cores.
PEER_KEYS = {"tiny": ("aegis", "torchserve", "http-ceiling"), "compute": ("aegis", "torchserve")}

CORES = "0,1"


def wait_host_ready(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
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


def load(
    server: Server, target: Target, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    run_wrk(server.port, target, concurrency, args.warmup, args.work, cores=CORES)
    cpu_before = tree_cpu_s(server.proc.pid)
    result = run_wrk(server.port, target, concurrency, args.window, args.work, cores=CORES)
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
        "rss_mb": tree_rss_mb(server.proc.pid),
    }
    log(
        f"{server.key:10s} c={concurrency:<3d} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.2f}"
        f"  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}  rss {row['rss_mb']:.0f} MB"
        f"  cpu/request {row['cpu_ms_per_request'] or 0:.3f} ms"
    )
    return row


def start(launch: Launch, key: str, model: str, payload: Payload, size: int) -> Server:
    if key == "aegis":
        return aegis.start(launch, model, payload, replicas=size)
    if key == "http-ceiling":
        return http_ceiling.start(launch, model, payload, processes=size)
    return torchserve.start(launch, model, payload, workers=size)


def served(
    launch: Launch,
    key: str,
    model: str,
    size: int,
    concurrencies: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    payload = make_payload(model, launch.artifacts)
    server = start(launch, key, model, payload, size)
    target = server.targets[0]
    try:
        wait_ready(server, target, payload)
    except RuntimeError:
        # A port picked free can be taken before the server binds it (wrk's own connections
        # come from the same range; TorchServe binds four): once more, on fresh ports.
        launch.fleet.stop(server.proc)
        log(f"{key} did not start; once more on other ports")
        server = start(launch, key, model, payload, size)
        target = server.targets[0]
        wait_ready(server, target, payload)
    try:
        if key == "aegis":
            wait_host_ready(server)
        return [
            {"server": key, "model": model, "size": size, **load(server, target, c, args)}
            for c in concurrencies
        ]
    finally:
        launch.fleet.stop(server.proc)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def replica_served(text: str, replica: str) -> float:
    pattern = rf'^aegis_inference_requests_total\{{code="200",.*replica="{replica}".*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def replica_up(text: str, replica: str) -> bool:
    return f'aegis_replica_up{{replica="{replica}"}} 1.0' in text


def poll(condition: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def restart(launch: Launch, args: argparse.Namespace) -> dict[str, Any]:
    payload = make_payload("tiny", launch.artifacts)
    server = aegis.start(launch, "tiny", payload, replicas=2)
    try:
        target = server.targets[0]
        wait_ready(server, target, payload)
        wait_host_ready(server)
        started = [
            json.loads(line)
            for line in server.log.read_text().splitlines()
            if '"replica_started"' in line
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
            if poll(lambda: replica_served(scrape(server.port), "1") > before, 40):
                outcome["kill_to_serving_s"] = round(time.monotonic() - killed, 2)

        watcher = threading.Thread(target=kill_and_watch, daemon=True)
        watcher.start()
        result = run_wrk(server.port, target, 16, 45.0, args.work, cores=CORES)
        watcher.join(60)
        outcome |= {
            "requests": result["requests"],
            "lost": result["socket_errors"] + result["timeouts"],
            "non2xx": result["non2xx"],
            "restarts": server.log.read_text().count('"replica_started"') - 2,
        }
        log(f"restart: {outcome}")
        return outcome
    finally:
        launch.fleet.stop(server.proc)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Aegis replicas on this machine")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=2, help="alternating peer rounds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "replicas")
    parser.add_argument("--skip", default="", help="comma-separated: scaling,peers,restart")
    args = parser.parse_args(argv)
    skip = set(args.skip.split(","))
    out: Path = args.out.resolve()
    args.work = out / "work"
    args.work.mkdir(parents=True, exist_ok=True)
    ensure_wrk()
    if "peers" not in skip:
        envs.ensure("torchserve")
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    fleet = Fleet()
    launch = Launch(fleet, args.work, artifacts, cores=CORES, one_thread=False)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/replicas.py " + " ".join(argv),
        "window_s": args.window,
    }
    try:
        if "scaling" not in skip:
            results["scaling"] = [
                row
                for model in ("tiny", "compute")
                for size in (int(n) for n in args.replicas.split(","))
                for row in served(launch, "aegis", model, size, [64], args)
            ]
        if "peers" not in skip:
            # Alternating rounds, so that a change in the host's other load hits both servers.
            results["peers"] = [
                {"round": round_, **row}
                for model in ("tiny", "compute")
                for round_ in range(args.rounds)
                for key in PEER_KEYS[model]
                for row in served(launch, key, model, 2, [16, 64], args)
            ]
        if "restart" not in skip:
            results["restart"] = restart(launch, args)
    finally:
        fleet.stop_all()
        (out / "results.json").write_text(json.dumps(results, indent=2))
    log(f"results in {out / 'results.json'}")
    return 0
