"""What the tests of front ends read from a running server: its processes by role, from the
supervisor's log, and which front end answered each request, from the access lines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np

from tests.support.logs import log_events
from tests.support.server import ServerProcess
from tests.support.v2 import infer
from tests.support.zoo import Tolerance, ZooModel


def pids(server: ServerProcess, label: str) -> dict[int, int]:
    """The latest process of each engine (label "replica") or front end ("frontend")."""
    started = log_events(server, "replica_started")
    return {event[label]: event["pid"] for event in started if label in event}


def maps(pid: int, library: str) -> bool:
    """Whether the process has mapped a file whose path holds `library`."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def serve_through_front_ends(
    server: ServerProcess,
    name: str,
    model: ZooModel,
    reference: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    engine_library: str,
    rows: int,
) -> None:
    """Requests of every batch size and several lengths, over fresh connections, until both
    front ends have answered (bounded): each reply equals the eager module's; the front ends
    have not mapped the runtime's library, which the engine has."""
    rng = np.random.default_rng(41)
    lengths = (1, 5, 17, 32) if model.dims else (None,)
    answered: set[int] = set()
    for _round in range(10):
        requests = [
            model.example(rng, count, cast("Mapping[str, int] | None", length and {"seq": length}))
            for count in range(1, rows + 1)
            for length in lengths
        ]
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda inputs: infer(server.url, name, inputs), requests))
        for inputs, (status, outputs) in zip(requests, replies, strict=True):
            assert status == 200, outputs
            assert isinstance(outputs, dict)
            for output, want in reference(inputs).items():
                assert outputs[output].shape == want.shape, output
                np.testing.assert_allclose(outputs[output], want, **tolerance, err_msg=output)
        answered = {
            event["frontend"] for event in log_events(server, "infer") if event["status"] == 200
        }
        if answered == {0, 1}:
            break
    assert answered == {0, 1}
    frontends, engines = pids(server, "frontend"), pids(server, "replica")
    assert len(frontends) == 2 and len(engines) == 1
    assert not any(maps(pid, engine_library) for pid in frontends.values())
    assert all(maps(pid, engine_library) for pid in engines.values())
