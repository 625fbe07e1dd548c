"""A/B of the hot path: one server process's CPU per request, this tree against an older commit.

Both builds serve the tiny model from one process on --server-core (`--config` written for the
benchmark, gRPC off where the build has it), each from its own tree (the base checked out with
`git worktree` under --work) on the same venv; wrk (c=64, V2 JSON, one row per request) loads them
from --client-core, alternately, round after round, so load from elsewhere falls on both alike.
The figure judged is the server's own CPU time (utime + stime from /proc over the window) divided
by the requests answered: it moves far less with other load than requests/s does.

    .venv/bin/python bench/ab_cpu.py --base 00e2e10 [--rounds 4] [--warmup 2] [--window 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
from serving.launch import HOST, Launch, Server, free_port
from serving.load import cpu_per_request, wait_ready
from serving.payload import make_payload
from serving.procs import Fleet, log
from serving.run import REPO, ensure_wrk, machine

MODEL = "tiny"
CONCURRENCY = 64


def git(*arguments: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *arguments], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def start(launch: Launch, tree: Path, name: str, payload: Any) -> Server:
    home = launch.home(name)
    port = free_port()
    spec = models.MODELS[MODEL]
    # A build from before gRPC refuses the key; one with gRPC would serve on 8081 unless told.
    grpc = "grpc_bind = []\n" if (tree / "appliance" / "grpc").is_dir() else ""
    config = home / "aegis.toml"
    config.write_text(
        f'[server]\nbind = ["{HOST}:{port}"]\nshutdown_grace_s = 2\n{grpc}\n'
        f'[storage]\ncache_dir = "{home / "cache"}"\n\n'
        f'[[models]]\nname = "{MODEL}"\nversion = "1"\n'
        f'model_path = "{launch.artifacts / (MODEL + ".pt2")}"\n'
        f'runtime = "torch"\ndevice = "cpu"\nmax_batch_size = {spec.max_batch_size}\n'
        f"max_queue_delay_ms = {spec.max_queue_delay_ms}\nmax_queue_size = 1024\n"
        f'[[models.inputs]]\nname = "input__0"\ndatatype = "FP32"\n'
        f"shape = [-1, {models.INPUTS}]\n"
        f'[[models.outputs]]\nname = "output__0"\ndatatype = "FP32"\n'
        f"shape = [-1, {models.OUTPUTS}]\n"
    )
    # The tree first on the path: the venv's editable install points at this checkout.
    command: list[str | Path] = [sys.executable, "-m", "appliance", "serve", "--config", config]
    proc, server_log = launch.spawn(command, home, {"PYTHONPATH": str(tree)})
    path = f"/v2/models/{MODEL}/infer"
    return Server(name, proc, port, [payload.json_target("aegis-json", path)], server_log)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare this tree with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=6.0)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--client-core", default="1")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "ab_cpu")
    args = parser.parse_args(argv)
    ensure_wrk()
    args.work.mkdir(parents=True, exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    payload = make_payload(MODEL, artifacts)
    base_tree = args.work / f"tree-{args.base}"
    git("worktree", "add", "--force", "--detach", str(base_tree), args.base)
    trees = {"base": base_tree, "this": REPO}
    fleet = Fleet()
    launch = Launch(fleet, args.work, artifacts, cores=args.server_core)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    started_on = machine()
    try:
        servers = {name: start(launch, tree, f"ab-{name}", payload) for name, tree in trees.items()}
        for server in servers.values():
            wait_ready(server, server.targets[0], payload)
        for number in range(1, args.rounds + 1):
            for name, server in servers.items():
                cpu_us, rps = cpu_per_request(
                    server,
                    server.targets[0],
                    CONCURRENCY,
                    args.warmup,
                    args.window,
                    args.work,
                    args.client_core,
                )
                figures[name].append((cpu_us, rps))
                log(f"round {number} {name:5s} {cpu_us:6.0f} us/request  {rps:8.1f} req/s")
    finally:
        fleet.stop_all()
        git("worktree", "remove", "--force", str(base_tree))
    medians = {name: statistics.median(cpu for cpu, _ in rows) for name, rows in figures.items()}
    summary = {
        "machine": started_on,
        "base": args.base,
        "this": git("rev-parse", "--short", "HEAD"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rounds": figures,
        "median_cpu_us_per_request": medians,
        "ratio_this_to_base": medians["this"] / medians["base"],
    }
    (args.work / "results.json").write_text(json.dumps(summary, indent=2))
    log(
        f"median CPU per request: base {medians['base']:.0f} us, this {medians['this']:.0f} us "
        f"({summary['ratio_this_to_base']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
