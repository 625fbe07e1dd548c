"""Aegis's own share of a request, without HTTP: the app's CPU per request, in process.

The V2 infer endpoint (the app `aegis serve` runs: checks, data plane, batcher, the torch model,
encoding, metrics; the access line as `--access-log` says) is called as an ASGI app by 64
concurrent in-process clients on uvloop, beside `batched_ceiling.py`'s app (the row as numpy, the
batch, the model, the reply, nothing else) called the same way: rounds alternate the two, and the
figure is each one's CPU time per request (`time.process_time`). With no sockets, no HTTP parser
and no client process, the spread between rounds is a few per cent where a wrk run's is a third
on this host, so small hot-path changes show here first; compare trees by running each
(`PYTHONPATH=<tree>`), judging the ratio of the app to the minimal one in the same run. One
intra-op thread, the tiny model; pin it with taskset for steadier figures.

    taskset -c 0 .venv/bin/python bench/app_cpu.py [--rounds 4] [--requests 200]
        [--access-log errors]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
import torch
import uvloop
from batched_ceiling import Batches, make_app
from serving.payload import Payload, make_payload
from serving.run import REPO

from appliance.config import parse_config
from appliance.config.schema import access_log_rate
from appliance.lifecycle.models import ModelLifecycle
from appliance.lifecycle.notify import SystemdNotifier
from appliance.logs import configure_logging, flush_after_each_turn
from appliance.metrics import Metrics
from appliance.repository import ModelRepository
from appliance.rest import AppContext, HttpSettings, create_app
from appliance.rest.access import AccessLogSampler

MODEL = "tiny"
CLIENTS = 64
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Serving:
    """Readiness of an app that serves from the start and never drains."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def is_ready(self) -> bool:
        return self.repository.ready

    def not_ready_reason(self) -> str:
        return "loading"

    def is_draining(self) -> bool:
        return False


async def one_request(app: App, scope: dict[str, Any], body: bytes) -> None:
    """One infer call as Hypercorn makes it; the client stays connected until the reply."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await never.wait()
        raise AssertionError("unreachable: the wait above never ends")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"the app answered {sent[0]['status']}: {sent[1:]}")


async def client(app: App, payload: Payload, requests: int) -> None:
    """`requests` infer calls one after another."""
    path = f"/v2/models/{MODEL}/infer"
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload.json_body)),
    ]
    for _ in range(requests):
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await one_request(app, scope, payload.json_body)


async def cpu_per_request(app: App, payload: Payload, requests: int) -> float:
    before = time.process_time()
    await asyncio.gather(*(client(app, payload, requests) for _ in range(CLIENTS)))
    return (time.process_time() - before) / (CLIENTS * requests) * 1e6


async def measure(args: argparse.Namespace, artifacts: Path, cache: Path) -> dict[str, list[float]]:
    spec = models.MODELS[MODEL]
    config = parse_config(
        {
            "server": {"access_log": args.access_log},
            "storage": {"cache_dir": str(cache)},
            "models": [
                {
                    "name": MODEL,
                    "version": "1",
                    "model_path": str(artifacts / f"{MODEL}.pt2"),
                    "runtime": "torch",
                    "device": "cpu",
                    "max_batch_size": spec.max_batch_size,
                    "max_queue_delay_ms": spec.max_queue_delay_ms,
                    "max_queue_size": 1024,
                    "inputs": [
                        {"name": "input__0", "datatype": "FP32", "shape": [-1, models.INPUTS]}
                    ],
                    "outputs": [
                        {"name": "output__0", "datatype": "FP32", "shape": [-1, models.OUTPUTS]}
                    ],
                }
            ],
        }
    )
    payload = make_payload(MODEL, artifacts)
    artifact = artifacts / f"{MODEL}.pt2"
    flush_after_each_turn(asyncio.get_running_loop())
    repository = ModelRepository()
    metrics = Metrics()
    lifecycle = ModelLifecycle(config, repository, metrics, SystemdNotifier(None))
    await lifecycle.start()
    try:
        sampler = AccessLogSampler(access_log_rate(args.access_log))
        context = AppContext(
            repository, metrics, HttpSettings(), Serving(repository), None, sampler
        )
        apps: dict[str, App] = {
            "aegis": create_app(context),
            "minimal": make_app(Batches(torch.export.load(str(artifact)).module()), MODEL),
        }
        figures: dict[str, list[float]] = {name: [] for name in apps}
        for app in apps.values():
            await cpu_per_request(app, payload, args.requests // 4)  # warm-up
        for number in range(1, args.rounds + 1):
            for name, app in apps.items():
                figures[name].append(await cpu_per_request(app, payload, args.requests))
            print(
                f"round {number}: aegis {figures['aegis'][-1]:.1f} us, minimal "
                f"{figures['minimal'][-1]:.1f} us a request",
                flush=True,
            )
        return figures
    finally:
        await lifecycle.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per client per round")
    parser.add_argument("--access-log", default="errors")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # The log lines (every access line with `--access-log all`) are rendered and written, to
    # nowhere, as a server's are to its journal.
    configure_logging(stream=open(os.devnull, "w"))  # noqa: SIM115 (open until the process ends)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    with tempfile.TemporaryDirectory() as cache:
        figures = uvloop.run(measure(args, artifacts, Path(cache)))
    aegis, minimal = statistics.median(figures["aegis"]), statistics.median(figures["minimal"])
    print(
        f"median: aegis {aegis:.1f} us, minimal {minimal:.1f} us a request; "
        f"Aegis adds {aegis - minimal:.1f} us ({aegis / minimal:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
