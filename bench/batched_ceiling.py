"""The batched ceiling: the HTTP ceiling plus what dynamic batching itself costs, and no more.

On Hypercorn + uvloop, as `http_ceiling.py`, each V2 JSON request's first input becomes a numpy
row; the request then waits on a future while rows gather into a batch (up to MAX_BATCH rows, or
MAX_DELAY_S after the first), which one thread runs through the torch.export model, zero-padded
to MAX_BATCH rows; each request's output row is encoded as a V2 JSON response. No validation, no
deadlines, no metrics, no log line, no disconnect watch, no queue bound: what any server that
batches on this stack must spend, so that a single Aegis process's CPU per request can be split
into what batching costs and what Aegis adds. One process, one intra-op thread. Run with the dev
venv's python:

    python bench/batched_ceiling.py HOST:PORT MODEL.pt2 MODEL_NAME
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import torch
import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# As the benchmark models' configs (models.py): batches of up to 32 rows, 5 ms to gather them.
MAX_BATCH = 32
MAX_DELAY_S = 0.005


class Batches:
    """Rows in, output rows out: one batch runs on the model thread per MAX_BATCH rows or
    MAX_DELAY_S, whichever comes first."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.model_thread = ThreadPoolExecutor(1)
        self.rows: list[np.ndarray] = []
        self.waiting: list[asyncio.Future[np.ndarray]] = []
        self.timer: asyncio.TimerHandle | None = None

    def submit(self, row: np.ndarray) -> asyncio.Future[np.ndarray]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[np.ndarray] = loop.create_future()
        self.rows.append(row)
        self.waiting.append(answer)
        if len(self.rows) >= MAX_BATCH:
            self.run()
        elif self.timer is None:
            self.timer = loop.call_later(MAX_DELAY_S, self.run)
        return answer

    def run(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rows, waiting = self.rows, self.waiting
        self.rows, self.waiting = [], []
        batch = np.concatenate(rows)
        padding = np.zeros((MAX_BATCH - len(batch), *batch.shape[1:]), dtype=batch.dtype)
        done = asyncio.get_running_loop().run_in_executor(
            self.model_thread, self.forward, np.concatenate([batch, padding])
        )

        def answer(finished: asyncio.Future[np.ndarray]) -> None:
            outputs = finished.result()
            for index, future in enumerate(waiting):
                future.set_result(outputs[index : index + 1])

        done.add_done_callback(answer)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = self.module(torch.from_numpy(batch)).numpy()
            return result


def make_app(batches: Batches, model_name: str) -> Callable[[dict[str, Any], Receive, Send], Any]:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        tensor = orjson.loads(b"".join(chunks))["inputs"][0]
        row = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        output = await batches.submit(row)
        body = orjson.dumps(
            {
                "model_name": model_name,
                "model_version": "1",
                "outputs": [
                    {
                        "name": "output__0",
                        "datatype": "FP32",
                        "shape": list(output.shape),
                        "data": output.reshape(-1),
                    }
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str]) -> None:
    bind, model_path, model_name = argv
    torch.set_num_threads(1)
    batches = Batches(torch.export.load(model_path).module())
    config = Config()
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.bind = [bind]
    uvloop.run(serve(make_app(batches, model_name), config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])
