"""TorchServe 0.12: the TorchScript file archived with the V2 handler, its own batching."""

from __future__ import annotations

import json
import os
import subprocess

import envs
import models

from serving.launch import HOST, PEER_FILES, Launch, Server, free_port
from serving.payload import Payload


def start(launch: Launch, model: str, payload: Payload, workers: int = 1) -> Server:
    home = launch.home(f"torchserve-{model}")
    bin_dir = envs.ensure("torchserve").parent
    store = home / "store"
    store.mkdir()
    spec = models.MODELS[model]
    subprocess.run(
        [
            bin_dir / "torch-model-archiver",
            "--model-name",
            model,
            "--version",
            "1",
            "--serialized-file",
            launch.artifacts / f"{model}.pt",
            "--handler",
            PEER_FILES / "torchserve_handler.py",
            "--extra-files",
            PEER_FILES / "v2.py",
            "--export-path",
            store,
            "--archive-format",
            "no-archive",
        ],
        check=True,
        timeout=300,
    )
    port, management, metrics = free_port(), free_port(), free_port()
    registered = {
        model: {
            "1": {
                "defaultVersion": True,
                "marName": model,
                "minWorkers": workers,
                "maxWorkers": workers,
                "batchSize": spec.max_batch_size,
                "maxBatchDelay": int(spec.max_queue_delay_ms),
                "responseTimeout": 120,
            }
        }
    }
    (home / "config.properties").write_text(
        f"inference_address=http://{HOST}:{port}\n"
        f"management_address=http://{HOST}:{management}\n"
        f"metrics_address=http://{HOST}:{metrics}\n"
        f"grpc_inference_address={HOST}\ngrpc_management_address={HOST}\n"
        f"grpc_inference_port={free_port()}\ngrpc_management_port={free_port()}\n"
        "disable_token_authorization=true\nenable_model_api=false\n"
        f"disable_system_metrics=true\ndefault_workers_per_model={workers}\n"
        f"model_store={store}\nload_models={model}\n"
        f"models={json.dumps(registered)}\n"
    )
    proc, log = launch.spawn(
        [
            bin_dir / "torchserve",
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--ts-config",
            home / "config.properties",
            "--model-store",
            store,
        ],
        home,
        {"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    target = payload.json_target("torchserve", f"/predictions/{model}")
    return Server("torchserve", proc, port, [target], log)
