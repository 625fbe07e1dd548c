"""gRPC beside HTTP on one Aegis server: the tiny model, c=64, one row per request.

One server (`aegis serve`, tiny model, batch 32, 5 ms delay, as compare.py) pinned to core 0,
the load generator on core 1. Each round loads it four ways, one after another, each a warm-up
and then a window: V2 JSON and V2 binary tensors over HTTP (wrk, keep-alive, as compare.py), then
ModelInfer (unary) and ModelStreamInfer (bidirectional streams) over gRPC (`grpc_load.py`:
grpc.aio, several channels, raw tensors as tritonclient sends them). The rounds alternate the
four, so load from elsewhere on the host falls on all of them alike.

For each: requests/s, client p50 / p99, and the server's CPU time per request (utime + stime of
its process tree over the window, from /proc), which other load on the host moves far less than
requests/s; beside it how busy the server's core and the client's were (CPU seconds per second),
which says which side bounded the run.

    .venv/bin/python bench/grpc_http.py [--rounds 3] [--warmup 2] [--window 8] [--channels 8]
        [--out bench/out/grpc_http]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import models
import numpy as np
from serving import aegis
from serving.launch import CLIENT_CORE, HOST, Launch, Server
from serving.load import run_wrk, wait_ready
from serving.payload import Payload, make_payload
from serving.procs import Fleet, log, tree_cpu_s
from serving.run import REPO, ensure_wrk, machine

from appliance.grpc.proto import inference_pb2 as pb
from appliance.grpc.proto import inference_pb2_grpc as pb_grpc

BENCH = Path(__file__).resolve().parent
CONCURRENCY = 64
MODES = ("http-json", "http-binary", "grpc-unary", "grpc-stream")


def grpc_request(payload: Payload) -> pb.ModelInferRequest:
    """The benchmark row as tritonclient.grpc sends it: shape and datatype, raw little-endian."""
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input__0", datatype="FP32", shape=list(payload.rows.shape))
    request.raw_input_contents.append(payload.rows.astype("<f4").tobytes())
    return request


def check_grpc(address: str, request: pb.ModelInferRequest, payload: Payload) -> None:
    """The gRPC door answers the benchmark request with the model's output, or this fails."""
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                reply = stub.ModelInfer(request, timeout=10)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    got = np.frombuffer(reply.raw_output_contents[0], dtype="<f4")
    if not np.allclose(got, payload.expected.reshape(-1), rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"gRPC answers a different function: {got}")


def children_cpu_s() -> float:
    """CPU time of this process's waited-for children (wrk), in seconds."""
    times = os.times()
    return times.children_user + times.children_system


def http_round(
    server: Server, mode: str, payload: Payload, args: argparse.Namespace
) -> dict[str, Any]:
    target = next(t for t in server.targets if t.name == f"aegis-{mode.removeprefix('http-')}")
    run_wrk(server.port, target, CONCURRENCY, args.warmup, args.work)
    server_before, client_before = tree_cpu_s(server.proc.pid), children_cpu_s()
    result = run_wrk(server.port, target, CONCURRENCY, args.window, args.work)
    server_cpu_s = tree_cpu_s(server.proc.pid) - server_before
    duration_s = result["duration_us"] / 1e6
    return {
        "replies": result["requests"] - result["non2xx"],
        "errors": result["non2xx"] + result["socket_errors"] + result["timeouts"],
        "duration_s": duration_s,
        "server_cpu_s": server_cpu_s,
        # wrk's own CPU, window and start-up included (taskset's exec is negligible).
        "client_cpu_s": children_cpu_s() - client_before,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
    }


def grpc_round(
    server: Server, mode: str, request_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        "taskset",
        "-c",
        CLIENT_CORE,
        sys.executable,
        str(BENCH / "grpc_load.py"),
        f"{HOST}:{server.grpc_port}",
        str(request_file),
        str(server.proc.pid),
        mode.removeprefix("grpc-"),
        str(CONCURRENCY),
        str(args.channels),
        str(args.warmup),
        str(args.window),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.warmup + args.window + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"grpc_load.py failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarize(mode: str, result: dict[str, Any]) -> dict[str, Any]:
    replies, seconds = result["replies"], result["duration_s"]
    row = {
        "mode": mode,
        "rps": replies / seconds,
        "cpu_us_per_request": 1e6 * result["server_cpu_s"] / replies if replies else None,
        "server_core_busy": result["server_cpu_s"] / seconds,
        "client_core_busy": result["client_cpu_s"] / seconds,
        **result,
    }
    log(
        f"{mode:11s} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms"
        f"  errors {row['errors']}  server cpu/request {row['cpu_us_per_request'] or 0:.0f} us"
        f"  server core {row['server_core_busy']:.2f}  client core {row['client_core_busy']:.2f}"
    )
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    payload = make_payload("tiny", artifacts)
    request = grpc_request(payload)
    request_file = work / "request-grpc.bin"
    request_file.write_bytes(request.SerializeToString())
    fleet = Fleet()
    launch = Launch(fleet, work, artifacts)
    rounds: list[list[dict[str, Any]]] = []
    started_on = machine()
    try:
        server = aegis.start(launch, "tiny", payload)
        for target in server.targets:
            wait_ready(server, target, payload)
        check_grpc(f"{HOST}:{server.grpc_port}", request, payload)
        for number in range(1, args.rounds + 1):
            log(f"round {number}")
            rows = []
            for mode in MODES:
                if mode.startswith("http-"):
                    result = http_round(server, mode, payload, args)
                else:
                    result = grpc_round(server, mode, request_file, args)
                rows.append(summarize(mode, result))
            rounds.append(rows)
    finally:
        fleet.stop_all()
    load = os.getloadavg()
    return {
        "machine": started_on,
        "load_average_at_end": [round(value, 2) for value in load],
        "concurrency": CONCURRENCY,
        "channels": args.channels,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "rounds": rounds,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--channels", type=int, default=8, help="gRPC channels (TCP connections)")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "grpc_http")
    args = parser.parse_args(argv)
    if CONCURRENCY % args.channels:
        parser.error(f"--channels must divide {CONCURRENCY}")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs two cores (server on core 0, load generator on core 1)")
    out: Path = args.out.resolve()
    args.work = out / "work"
    ensure_wrk()
    report = measure(args)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    log(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
