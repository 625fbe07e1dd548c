"""The Mlp that the reload, replica and front-end tests serve as model "m", its versions told
apart by their seed: a row for it, a request, the answer each version gives, a new version
dropped in place, and client threads that keep requesting it while a test acts on the server."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from tests.support.models import Mlp, mlp_pt2
from tests.support.server import ServerProcess

# The row the load clients send.
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


def infer(server: ServerProcess, x: np.ndarray, model: str = "m") -> tuple[int, dict[str, Any]]:
    """The status and JSON answer to one request for the rows `x`, on a fresh connection."""
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
    )
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def expected(x: np.ndarray, seed: int) -> np.ndarray:
    """What the Mlp of `seed` answers to `x`, computed eagerly."""
    with torch.no_grad():
        return cast(np.ndarray, Mlp(seed=seed)(torch.from_numpy(x)).numpy())


def replace_model(path: Path, seed: int) -> None:
    """The Mlp of `seed` at `path`, written beside it and renamed over it: a reload never sees
    a half-written file."""
    staging = path.with_name("staging.pt2")
    mlp_pt2(staging, seed=seed)
    staging.replace(path)


class Load(threading.Thread):
    """Back-to-back requests, each over a fresh connection, bounded in count and time."""

    def __init__(self, server: ServerProcess, limit_s: float = 120, limit_count: int = 5000):
        super().__init__(daemon=True)
        self.server = server
        self.limit_s, self.limit_count = limit_s, limit_count
        self.results: list[tuple[float, int, list[float] | str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.limit_s
        while (
            not self.stop.is_set()
            and time.monotonic() < end
            and len(self.results) < self.limit_count
        ):
            try:
                status, body = infer(self.server, X)
                data = body["outputs"][0]["data"] if status == 200 else str(body.get("error"))
            except (OSError, http.client.HTTPException) as error:
                status, data = 0, repr(error)
            self.results.append((time.monotonic(), status, data))


def run_load(clients: list[Load], action: Callable[[], object], settle_s: float = 0.5) -> None:
    for client in clients:
        client.start()
    try:
        time.sleep(settle_s)
        action()
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(30)
