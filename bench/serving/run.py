"""The command line: every wanted target for each model, then the overload run and the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import envs
import models
import report

import serving
from serving.launch import SERVER_CORE, Launch
from serving.load import Row, measure, wait_ready
from serving.overload import overload
from serving.payload import Payload, make_payload
from serving.peers import DEMO, PEERS, TARGETS, Peer, described
from serving.procs import Fleet, log

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent


@dataclass
class Results:
    machine: str
    command: str
    concurrency: list[int]
    warmup_s: float
    window_s: float
    targets: dict[str, dict[str, str]] = field(default_factory=described)
    rows: list[Row] = field(default_factory=list)
    compute_ceiling: dict[str, Any] = field(default_factory=dict)
    overload: dict[str, Any] | None = None
    demo: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({cpu}), {os.uname().machine}, "
        f"load average at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )


def commit() -> str:
    """The checkout's HEAD, short."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("installing wrk from Debian")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=600)


def compute_ceiling(artifacts: Path, model: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            "taskset",
            "-c",
            SERVER_CORE,
            sys.executable,
            str(BENCH / "models.py"),
            "ceiling",
            str(artifacts),
            model,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    log(
        f"{model:8s} compute ceiling {result['best_rows_per_s']:.0f} rows/s at bucket "
        f"{result['best_bucket']}; batch 1 takes {result['batch1_ms']:.3f} ms"
    )
    return result


def run_peer(
    launch: Launch,
    peer: Peer,
    wanted: list[str],
    model: str,
    payload: Payload,
    concurrency: list[int],
    args: argparse.Namespace,
    rows: list[Row],
    failures: list[str],
) -> None:
    log(f"{model}: starting {peer.key}")
    try:
        server = peer.start(launch, model, payload)
    except Exception as error:  # a peer that fails to install or start is reported, not fatal
        failures.append(f"{model}/{peer.key}: {error}")
        log(f"{model}: {peer.key} failed to start: {error}")
        return
    try:
        targets = [target for target in server.targets if target.name in wanted]
        for target in targets:
            wait_ready(server, target, payload)
        for target in targets:
            for c in concurrency:
                rows.append(
                    measure(server, target, model, c, args.warmup, args.window, launch.work)
                )
    except Exception as error:
        failures.append(f"{model}/{peer.key}: {error}")
        log(f"{model}: {peer.key} failed: {error}")
    finally:
        launch.fleet.stop(server.proc)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(serving.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="tiny,compute")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--no-overload", action="store_true")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--quick", action="store_true", help="c=1,64, 1 s warm-up, 3 s windows")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "latest")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.warmup, args.window = "1,64", 1.0, 3.0
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    wanted = [t for t in args.targets.split(",") if t]
    unknown = set(wanted) - set(TARGETS)
    if unknown:
        sys.exit(f"bench: unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs two cores (server on core 0, load generator on core 1)")
    ensure_wrk()
    peers = [peer for peer in PEERS if set(peer.labels) & set(wanted)]
    for peer in peers:
        if peer.venv is not None:
            envs.ensure(peer.venv)
    envs.ensure("tools")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    results = Results(
        machine=machine(),
        command="python bench/compare.py " + " ".join(argv),
        concurrency=concurrency,
        warmup_s=args.warmup,
        window_s=args.window,
    )
    fleet = Fleet()
    launch = Launch(fleet, work, artifacts)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for model in args.models.split(","):
            payload = make_payload(model, artifacts)
            results.compute_ceiling[model] = compute_ceiling(artifacts, model)
            for peer in peers:
                run_peer(
                    launch,
                    peer,
                    wanted,
                    model,
                    payload,
                    concurrency,
                    args,
                    results.rows,
                    results.failures,
                )
        if not args.no_overload:
            tiny = make_payload("tiny", artifacts)
            results.overload = overload(launch, tiny, args.warmup, args.window)
        if not args.no_demo:
            run_peer(
                launch,
                DEMO,
                list(DEMO.labels),
                "tiny",
                make_payload("tiny", artifacts),
                [1, 64],
                args,
                results.demo,
                results.failures,
            )
    finally:
        fleet.stop_all()
    (out / "results.json").write_text(json.dumps(asdict(results), indent=2))
    (out / "results.md").write_text(report.markdown(asdict(results)))
    subprocess.run(
        [
            str(envs.python_of("tools")),
            str(BENCH / "plot.py"),
            str(out / "results.json"),
            str(out / "serving.png"),
        ],
        check=True,
        timeout=300,
    )
    log(f"results: {out / 'results.md'}, plot: {out / 'serving.png'}")
    return 1 if results.failures else 0
