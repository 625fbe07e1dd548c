"""Goodput under overload: Aegis (tiny model, `max_queue_size = 64`) at its capacity, then at 16x
that many closed-loop clients, which retry at once on a 503 (wrk ignores Retry-After).

Capacity is the 200s a second at 64 connections (as many as the queue holds); goodput is the 200s a
second at 1,024. The target is goodput >= 0.7x capacity: refusing must cost the loop so little
that it keeps serving what it admitted. Server pinned to core 0, wrk to core 1, as in compare.py;
the rounds alternate the two loads on one server.

    .venv/bin/python bench/overload_goodput.py [--window 8] [--rounds 2] [--out bench/out/goodput]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
from serving import aegis
from serving.launch import Launch
from serving.load import run_wrk, wait_ready
from serving.payload import make_payload
from serving.procs import Fleet, log
from serving.run import REPO, ensure_wrk, machine

QUEUE = 64
OVERLOAD = 16


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    payload = make_payload("tiny", artifacts)
    fleet = Fleet()
    launch = Launch(fleet, work, artifacts)
    rounds: list[dict[str, float]] = []
    try:
        server = aegis.start(launch, "tiny", payload, queue_size=QUEUE)
        target = server.targets[0]
        wait_ready(server, target, payload)
        for _ in range(args.rounds):
            figures: dict[str, float] = {}
            for label, connections in (("capacity", QUEUE), ("overload", QUEUE * OVERLOAD)):
                run_wrk(server.port, target, connections, args.warmup, work)
                result = run_wrk(server.port, target, connections, args.window, work)
                seconds = result["duration_us"] / 1e6
                figures[f"{label}_ok_per_s"] = (result["requests"] - result["non2xx"]) / seconds
                figures[f"{label}_refused_per_s"] = result["non2xx"] / seconds
            figures["goodput_ratio"] = figures["overload_ok_per_s"] / figures["capacity_ok_per_s"]
            log(
                f"capacity {figures['capacity_ok_per_s']:.0f} ok/s; {OVERLOAD}x: "
                f"{figures['overload_ok_per_s']:.0f} ok/s, "
                f"{figures['overload_refused_per_s']:.0f} refused/s; "
                f"goodput {figures['goodput_ratio']:.2f}x capacity"
            )
            rounds.append(figures)
    finally:
        fleet.stop_all()
    report = {"machine": machine(), "queue": QUEUE, "overload": OVERLOAD, "rounds": rounds}
    (out / "goodput.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "goodput")
    args = parser.parse_args(argv)
    ensure_wrk()
    report = measure(args)
    ratios = [figures["goodput_ratio"] for figures in report["rounds"]]
    print(f"goodput at {OVERLOAD}x overload: {', '.join(f'{r:.2f}' for r in ratios)}x capacity")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
