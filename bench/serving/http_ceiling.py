"""The HTTP ceiling: `bench/http_ceiling.py`, answering every request with Aegis's reply."""

from __future__ import annotations

import sys
from pathlib import Path

from serving.launch import HOST, Launch, Server, free_port
from serving.payload import Payload

SCRIPT = Path(__file__).resolve().parents[1] / "http_ceiling.py"


def start(launch: Launch, model: str, payload: Payload, processes: int = 1) -> Server:
    home = launch.home(f"http-ceiling-{model}-{processes}")
    reply = home / "reply.json"
    reply.write_bytes(payload.reply)
    port = free_port()
    proc, log = launch.spawn(
        [sys.executable, SCRIPT, f"{HOST}:{port}", reply, str(processes)], home
    )
    # Its reply is of the right size but not computed from this request.
    target = payload.json_target("http-ceiling", f"/v2/models/{model}/infer", check=False)
    return Server("http-ceiling", proc, port, [target], log)


BATCHED_SCRIPT = Path(__file__).resolve().parents[1] / "batched_ceiling.py"


def start_batched(launch: Launch, model: str, payload: Payload) -> Server:
    """`bench/batched_ceiling.py`: the ceiling plus batching and the model; its answers are
    computed, so they are checked as Aegis's are."""
    home = launch.home(f"batched-ceiling-{model}")
    port = free_port()
    artifact = launch.artifacts / f"{model}.pt2"
    command: list[str | Path] = [sys.executable, BATCHED_SCRIPT, f"{HOST}:{port}", artifact, model]
    proc, log = launch.spawn(command, home)
    target = payload.json_target("batched-ceiling", f"/v2/models/{model}/infer")
    return Server("batched-ceiling", proc, port, [target], log)
