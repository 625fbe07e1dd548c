"""MLServer 1.7.1: a custom runtime over the TorchScript file, its adaptive batching."""

from __future__ import annotations

import json

import envs
import models

from serving.launch import HOST, PEER_FILES, Launch, Server, free_port
from serving.payload import Payload


def start(launch: Launch, model: str, payload: Payload) -> Server:
    home = launch.home(f"mlserver-{model}")
    python = envs.ensure("mlserver")
    spec = models.MODELS[model]
    port = free_port()
    settings = {
        "host": HOST,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False,
    }
    (home / "settings.json").write_text(json.dumps(settings))
    (home / model).mkdir()
    model_settings = {
        "name": model,
        "implementation": "mlserver_runtime.TorchScriptModel",
        "max_batch_size": spec.max_batch_size,
        "max_batch_time": spec.max_queue_delay_ms / 1000,
        "parameters": {"uri": str(launch.artifacts / f"{model}.pt")},
    }
    (home / model / "model-settings.json").write_text(json.dumps(model_settings))
    proc, log = launch.spawn(
        [python.parent / "mlserver", "start", home], home, {"PYTHONPATH": str(PEER_FILES)}
    )
    target = payload.json_target("mlserver", f"/v2/models/{model}/infer")
    return Server("mlserver", proc, port, [target], log)
