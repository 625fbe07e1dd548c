"""Goodput under overload: Aegis (tiny model, `max_queue_size = 64`) at its capacity, then at 16x
that many closed-loop clients, which retry at once on a 503 (wrk ignores Retry-After).

Capacity is the 200s a second at 64 connections (as many as the queue holds); goodput is the 200s a
second at 1,024. The target is goodput >= 0.9x capacity: refusing must cost the loop so little
that it keeps serving what it admitted. Server pinned to core 0, wrk to core 1, as in compare.py.
The two loads alternate on one server, capacity first and last, and each overload window is
judged against the mean of the capacity windows on either side of it: on a shared host the core's
speed drifts within a minute, and a drift between two windows alone reads as a goodput change.
Each load is one client run, a warm-up then the window, counted by the server's own request
counters at the window's edges (a client run per window would close its connections as the next
one opens its own, and the server would spend the window letting the old ones go); after an
overload, a wait until the server has let go of every connection it held (a refused connection
is held up to `MAX_HOLD_S`, +20%). Server CPU per answered request, from /proc, beside each.

    .venv/bin/python bench/overload_goodput.py [--window 8] [--rounds 2] [--frontends 0]
        [--out bench/out/goodput]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
from serving import aegis
from serving.launch import Launch, Server
from serving.load import model_samples, run_wrk, wait_ready
from serving.payload import Target, make_payload
from serving.procs import Fleet, log, tree_cpu_s
from serving.run import REPO, ensure_wrk, machine

from appliance.rest.pacing import MAX_HOLD_S

MODEL = "tiny"
QUEUE = 64
OVERLOAD = 16


def answers(port: int, model: str) -> tuple[float, float]:
    """(200s, 503s) the server has counted for `model` so far, from its /metrics."""
    counted = {"200": 0.0, "503": 0.0}
    for sample in model_samples(port, model, timeout_s=30):
        if sample.name == "aegis_inference_requests_total" and sample.labels["code"] in counted:
            counted[sample.labels["code"]] += sample.value
    return counted["200"], counted["503"]


def load_window(
    server: Server, target: Target, connections: int, args: argparse.Namespace, work: Path
) -> dict[str, float]:
    """One client run of warm-up plus window; figures over the window from the server's own
    counters and CPU, so that the client's connections stay open across the window's edges."""
    client = threading.Thread(
        target=run_wrk,
        args=(server.port, target, connections, args.warmup + args.window + 1, work),
    )
    client.start()
    try:
        time.sleep(args.warmup)
        ok_before, refused_before = answers(server.port, MODEL)
        cpu_before = tree_cpu_s(server.proc.pid)
        started = time.perf_counter()
        time.sleep(args.window)
        ok_after, refused_after = answers(server.port, MODEL)
        cpu_s = tree_cpu_s(server.proc.pid) - cpu_before
        seconds = time.perf_counter() - started
    finally:
        client.join()
    ok = ok_after - ok_before
    return {
        "ok_per_s": ok / seconds,
        "refused_per_s": (refused_after - refused_before) / seconds,
        "cpu_us_per_ok": cpu_s / max(ok, 1) * 1e6,
    }


def bracketed(
    before: dict[str, float], overload: dict[str, float], after: dict[str, float]
) -> dict[str, float]:
    """One round's figures: the overload window against the mean of the capacity windows on
    either side of it."""
    figures = {
        f"capacity_{name}": (before[name] + after[name]) / 2
        for name in ("ok_per_s", "refused_per_s", "cpu_us_per_ok")
    }
    figures["capacity_ok_per_s_before"] = before["ok_per_s"]
    figures["capacity_ok_per_s_after"] = after["ok_per_s"]
    figures.update({f"overload_{name}": value for name, value in overload.items()})
    figures["goodput_ratio"] = figures["overload_ok_per_s"] / figures["capacity_ok_per_s"]
    return figures


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    payload = make_payload(MODEL, artifacts)
    fleet = Fleet()
    launch = Launch(fleet, work, artifacts)
    rounds: list[dict[str, float]] = []
    try:
        server = aegis.start(launch, MODEL, payload, queue_size=QUEUE, frontends=args.frontends)
        target = server.targets[0]
        wait_ready(server, target, payload)
        before = load_window(server, target, QUEUE, args, work)
        for _ in range(args.rounds):
            overload = load_window(server, target, QUEUE * OVERLOAD, args, work)
            # Until the connections refused and held have been let go.
            time.sleep(MAX_HOLD_S * 1.2 + 1.0)
            after = load_window(server, target, QUEUE, args, work)
            figures = bracketed(before, overload, after)
            log(
                f"capacity {figures['capacity_ok_per_s']:.0f} ok/s "
                f"({before['ok_per_s']:.0f} before, {after['ok_per_s']:.0f} after); {OVERLOAD}x: "
                f"{figures['overload_ok_per_s']:.0f} ok/s, "
                f"{figures['overload_refused_per_s']:.0f} refused/s; server CPU per answer "
                f"{figures['capacity_cpu_us_per_ok']:.0f} -> "
                f"{figures['overload_cpu_us_per_ok']:.0f} us; "
                f"goodput {figures['goodput_ratio']:.2f}x capacity"
            )
            rounds.append(figures)
            before = after
    finally:
        fleet.stop_all()
    report = {
        "machine": machine(),
        "queue": QUEUE,
        "overload": OVERLOAD,
        "frontends": args.frontends,
        "rounds": rounds,
    }
    (out / "goodput.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--frontends", type=int, default=0, help="front-end processes before the one engine"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "goodput")
    args = parser.parse_args(argv)
    ensure_wrk()
    report = measure(args)
    ratios = [figures["goodput_ratio"] for figures in report["rounds"]]
    print(f"goodput at {OVERLOAD}x overload: {', '.join(f'{r:.2f}' for r in ratios)}x capacity")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
