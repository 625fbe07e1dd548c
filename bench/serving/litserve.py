"""LitServe 0.2.19: `bench/peers/litserve_app.py` over the TorchScript file, its batching."""

from __future__ import annotations

import envs
import models

from serving.launch import PEER_FILES, Launch, Server, free_port
from serving.payload import Payload


def start(launch: Launch, model: str, payload: Payload) -> Server:
    home = launch.home(f"litserve-{model}")
    python = envs.ensure("litserve")
    spec = models.MODELS[model]
    port = free_port()
    proc, log = launch.spawn(
        [
            python,
            PEER_FILES / "litserve_app.py",
            launch.artifacts / f"{model}.pt",
            str(port),
            str(spec.max_batch_size),
            str(spec.max_queue_delay_ms / 1000),
        ],
        home,
        {"PYTHONPATH": str(PEER_FILES)},
    )
    return Server("litserve", proc, port, [payload.json_target("litserve", "/predict")], log)
