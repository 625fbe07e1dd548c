"""Under 16x overload the server keeps serving: closed-loop keep-alive clients that retry at once
on a 503 (ignoring Retry-After) are refused fast, but each connection's next request waits out
the Retry-After (longer as the overload goes on), so refusing takes little of the loop and
goodput stays near capacity.

Capacity: 200s a second with as many clients as the queue holds. Overload: 16 times as many.
The figure for the record is bench/overload_goodput.py's (wrk, pinned cores); this test bounds
the ratio with a wide margin, since its load generator shares the cores with the server.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.load import ONE_THREAD
from tests.support.server import running_server

QUEUE = 16
OVERLOAD = 16
WINDOW_S = 6.0
BODY = json_infer("x", "FP32", [1, 8], [0.5] * 8)
GOODPUT_BOUND = 0.3  # the target is 0.7 (bench/overload_goodput.py); without the hold: 0.11
REFUSAL_MEDIAN_S = 0.25  # the 503 itself is not held back, only the connection's next request


async def client(
    host: str, port: int, end: float, counts: dict[int, int], refusals: list[float]
) -> None:
    head = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    status = 200
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < end:
            # After a 503 the connection's next request is held for Retry-After, on purpose.
            held = status == 503
            sent = time.monotonic()
            writer.write(head + BODY)
            status_line = await reader.readline()
            length = 0
            closing = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection":
                    closing = "close" in value.lower()
            await reader.readexactly(length)
            status = int(status_line.split()[1])
            answered = time.monotonic()
            if answered > end:
                break  # a request held past the window's end is not the window's
            counts[status] = counts.get(status, 0) + 1
            if status == 503 and not held:
                refusals.append(answered - sent)
            if closing:
                # Hypercorn ends a keep-alive connection after its request limit, as real
                # servers do; a real client follows and reconnects.
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def closed_loop(host: str, port: int, clients: int) -> tuple[dict[int, int], list[float]]:
    """Statuses and refusal times of the answers that arrived within WINDOW_S."""
    counts: dict[int, int] = {}
    refusals: list[float] = []
    end = time.monotonic() + WINDOW_S
    await asyncio.gather(*(client(host, port, end, counts, refusals) for _ in range(clients)))
    return counts, refusals


def test_goodput_under_16x_overload_stays_near_capacity(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    extra = f"max_batch_size = 8\nmax_queue_size = {QUEUE}\nwarmup_iters = 1"
    config = server_config(tmp_path, model_table("mlp", artifacts["mlp.pt2"], extra))
    with running_server(config, tmp_path, ONE_THREAD) as server:
        assert call(server, "POST", "/v2/models/mlp/infer", BODY).status == 200
        base, _ = asyncio.run(closed_loop(server.host, server.port, QUEUE))
        over, refusals = asyncio.run(closed_loop(server.host, server.port, QUEUE * OVERLOAD))
    capacity = base.get(200, 0) / WINDOW_S
    goodput = over.get(200, 0) / WINDOW_S
    refused = over.get(503, 0) / WINDOW_S
    print(
        f"\nFIGURES goodput: capacity {capacity:.0f}/s ({QUEUE} clients); {OVERLOAD}x "
        f"({QUEUE * OVERLOAD} clients): {goodput:.0f} ok/s = {goodput / capacity:.2f}x capacity, "
        f"{refused:.0f} refused/s (median "
        f"{statistics.median(refusals) * 1000 if refusals else 0:.1f} ms); statuses {over}"
    )
    assert set(over) <= {200, 503}, over
    assert goodput >= GOODPUT_BOUND * capacity, (goodput, capacity)
    # At most about one refusal per connection per Retry-After (1 s at first), with slack.
    assert refused <= 1.5 * QUEUE * OVERLOAD, refused
    # The refusal is sent at once; only the next request on the connection waits.
    assert refusals and statistics.median(refusals) < REFUSAL_MEDIAN_S, sorted(refusals)[:10]
