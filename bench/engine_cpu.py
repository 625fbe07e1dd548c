"""The channel and the engine alone: CPU per request of each end, with no HTTP in front.

An engine process serves the tiny model (as `aegis serve` runs one: uvloop, the shortened switch
interval, metrics in multiprocess files, torch on --threads threads); this process is its front
end without Hypercorn: the real `EngineLinks` and `EngineModel`, with --concurrency coroutines
each sending one-row requests back to back. Over a window of --requests requests after a
warm-up, it reads from /proc the CPU time of the engine's event-loop thread, of its other threads
(the model's, torch's own), and of this process: what the channel and routing cost a front end,
plus the few microseconds of the coroutines that stand in for HTTP clients.

    .venv/bin/python bench/engine_cpu.py [--requests 20000] [--concurrency 64] [--threads 1]
        [--rounds 3] [--engine-core 0] [--frontend-core 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
import numpy as np
import psutil
import tomllib
import torch
import uvloop

from appliance.channel import Arena, EngineLinks, EngineServer
from appliance.config import parse_config
from appliance.lifecycle.models import ModelLifecycle
from appliance.lifecycle.notify import SystemdNotifier
from appliance.lifecycle.process import freeze_heap, tune_for_serving
from appliance.logs import configure_logging
from appliance.metrics import Metrics
from appliance.repository import ModelRepository
from appliance.units import MiB

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny"


def config_text(artifact: Path, cache: Path) -> str:
    return f"""
[storage]
cache_dir = "{cache}"

[[models]]
name = "{MODEL}"
model_path = "{artifact}"
runtime = "torch"
device = "cpu"
max_batch_size = 32
max_queue_delay_ms = 5.0
max_queue_size = 1024
"""


def engine(config_path: str, socket_path: str, threads: int) -> None:
    """The engine process: serve until stdin closes."""
    configure_logging("warning", sys.stderr)  # stdout says "ready", and nothing else
    torch.set_num_threads(threads)
    config = parse_config(tomllib.loads(Path(config_path).read_text()))

    async def serve() -> None:
        repository = ModelRepository()
        lifecycle = ModelLifecycle(config, repository, Metrics(), SystemdNotifier(None))
        server = EngineServer(repository, socket_path)
        tune_for_serving()
        await server.start()
        await lifecycle.start()
        freeze_heap()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.close()
        await lifecycle.close()

    uvloop.run(serve())


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """(the main thread's, every other thread's) CPU seconds."""
    main = other = 0.0
    for thread in process.threads():
        spent = thread.user_time + thread.system_time
        if thread.id == process.pid:
            main += spent
        else:
            other += spent
    return main, other


async def front_end(socket_path: str, args: argparse.Namespace, engine_pid: int) -> list[Any]:
    links = EngineLinks((socket_path,), ModelRepository(), Metrics(), Arena(16 * MiB, "bench"), 0)
    await asyncio.wait_for(links.start(), 60)
    model = links.repository.get(MODEL)
    loop = asyncio.get_running_loop()
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    [given] = model.signature.inputs
    [wanted] = model.signature.outputs
    engine_process = psutil.Process(engine_pid)
    rows: list[Any] = []
    batches: set[int] = set()  # the batch numbers that answered this round's requests

    async def client(count: int) -> None:
        for _ in range(count):
            result = await model.infer({given.name: x}, 1, loop.time() + 30)
            assert result.outputs[wanted.name].shape == (1, 10)
            batches.add(result.batch)

    async def burst(total: int) -> None:
        share = total // args.concurrency
        await asyncio.gather(*(client(share) for _ in range(args.concurrency)))

    try:
        await burst(args.requests // 4)  # warm-up
        for number in range(1, args.rounds + 1):
            batches.clear()
            loop_before, model_before = cpu_seconds(engine_process)
            frontend_before = time.thread_time()
            started = time.perf_counter()
            await burst(args.requests)
            elapsed = time.perf_counter() - started
            loop_after, model_after = cpu_seconds(engine_process)
            frontend_after = time.thread_time()
            done = args.requests // args.concurrency * args.concurrency
            row = {
                "round": number,
                "requests": done,
                "rps": done / elapsed,
                # The engine's work per request falls as its batches fill: compare runs by both.
                "mean_batch": done / len(batches),
                "engine_loop_us": 1e6 * (loop_after - loop_before) / done,
                "engine_model_threads_us": 1e6 * (model_after - model_before) / done,
                "frontend_us": 1e6 * (frontend_after - frontend_before) / done,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        await links.close()
        links.arena.close()
    return rows


def main(argv: list[str]) -> int:
    if argv[:1] == ["engine"]:
        engine(argv[1], argv[2], int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine-core", type=int, default=0)
    parser.add_argument("--frontend-core", type=int, default=1)
    args = parser.parse_args(argv)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    with tempfile.TemporaryDirectory(prefix="aegis-engine-cpu-") as work:
        folder = Path(work)
        config = folder / "aegis.toml"
        config.write_text(config_text(artifacts / f"{MODEL}.pt2", folder / "cache"))
        socket_path = str(folder / "engine.sock")
        metrics = folder / "metrics"
        metrics.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "engine", str(config), socket_path, str(args.threads)]
        proc = subprocess.Popen(
            ["taskset", "-c", str(args.engine_core), *command],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                print("engine_cpu: the engine did not start", file=sys.stderr)
                return 1
            os.sched_setaffinity(0, {args.frontend_core})
            uvloop.run(front_end(socket_path, args, proc.pid))
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
