"""The servers the benchmark runs: one table, each entry with its start, targets and labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from serving import aegis, http_ceiling, litserve, mlserver, torchserve
from serving.launch import Launch, Server
from serving.payload import Payload

Start = Callable[[Launch, str, Payload], Server]
# ceiling: what the stack allows; aegis: what is measured; peer: what it is measured against.
Role = Literal["ceiling", "aegis", "peer"]


@dataclass(frozen=True)
class Peer:
    key: str
    start: Start
    labels: dict[str, str]  # each target this server is loaded through -> its label in reports
    role: Role
    venv: str | None = None  # the cached venv (bench/envs.py) it runs from, installed up front


PEERS: tuple[Peer, ...] = (
    Peer("http-ceiling", http_ceiling.start, {"http-ceiling": "HTTP ceiling"}, "ceiling"),
    Peer(
        "aegis", aegis.start, {"aegis-json": "Aegis JSON", "aegis-binary": "Aegis binary"}, "aegis"
    ),
    Peer("torchserve", torchserve.start, {"torchserve": "TorchServe 0.12"}, "peer", "torchserve"),
    Peer("mlserver", mlserver.start, {"mlserver": "MLServer 1.7.1"}, "peer", "mlserver"),
    Peer("litserve", litserve.start, {"litserve": "LitServe 0.2.19"}, "peer", "litserve"),
)
DEMO = Peer("aegis-demo", aegis.start_demo, {"aegis-demo": "Aegis demo"}, "aegis")

TARGETS: dict[str, Peer] = {target: peer for peer in PEERS for target in peer.labels}


def described() -> dict[str, dict[str, str]]:
    """Each target's label and role, as the report and the plot read them from results.json."""
    return {
        target: {"label": label, "role": peer.role}
        for peer in (*PEERS, DEMO)
        for target, label in peer.labels.items()
    }
