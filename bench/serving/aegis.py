"""Aegis: the `serve` command on a config written for the benchmark model, and the demo."""

from __future__ import annotations

import sys
from pathlib import Path

import models

from serving.launch import HOST, Launch, Server, free_port
from serving.payload import Payload

AEGIS = Path(sys.executable).parent / "aegis"


def start(
    launch: Launch,
    model: str,
    payload: Payload,
    queue_size: int = 1024,
    replicas: int = 1,
    frontends: int = 0,
    access_log: str = "all",
    grpc: bool = True,
) -> Server:
    """`frontends` is set whatever its value: "auto" would run front ends on hosts with more
    cores, and the benchmarks compare like with like. `grpc=False`: no gRPC listener."""
    layout = f"{queue_size}-{replicas}-{frontends}-{access_log}{'' if grpc else '-no-grpc'}"
    home = launch.home(f"aegis-{model}-{layout}")
    spec = models.MODELS[model]
    port = free_port()
    config = home / "aegis.toml"
    config.write_text(
        f'[server]\nbind = ["{HOST}:{port}"]\nshutdown_grace_s = 2\nreplicas = {replicas}\n'
        f'frontends = {frontends}\naccess_log = "{access_log}"\n'
        # No gRPC unless --grpc-bind below asks for it.
        "grpc_bind = []\n\n"
        f'[storage]\ncache_dir = "{home / "cache"}"\n\n'
        f'[[models]]\nname = "{model}"\nversion = "1"\n'
        f'model_path = "{launch.artifacts / (model + ".pt2")}"\n'
        f'runtime = "torch"\ndevice = "cpu"\nmax_batch_size = {spec.max_batch_size}\n'
        f"max_queue_delay_ms = {spec.max_queue_delay_ms}\nmax_queue_size = {queue_size}\n"
        f'[[models.inputs]]\nname = "input__0"\ndatatype = "FP32"\n'
        f"shape = [-1, {models.INPUTS}]\n"
        f'[[models.outputs]]\nname = "output__0"\ndatatype = "FP32"\n'
        f"shape = [-1, {models.OUTPUTS}]\n"
    )
    # gRPC on a free port: the default 0.0.0.0:8081 would clash between servers.
    grpc_port = free_port() if grpc else None
    listen = ["--grpc-bind", f"{HOST}:{grpc_port}"] if grpc_port else []
    proc, log = launch.spawn(
        [AEGIS, "serve", "--config", config, "--bind", f"{HOST}:{port}", *listen], home
    )
    path = f"/v2/models/{model}/infer"
    targets = [payload.json_target("aegis-json", path), payload.binary_target("aegis-binary", path)]
    return Server("aegis", proc, port, targets, log, metrics_model=model, grpc_port=grpc_port)


def start_demo(launch: Launch, _model: str, payload: Payload) -> Server:
    home = launch.home("aegis-demo")
    port = free_port()
    proc, log = launch.spawn(
        [AEGIS, "demo", "--bind", f"{HOST}:{port}", "--grpc-bind", f"{HOST}:{free_port()}"],
        home,
        {"AEGIS_DEMO_DIR": str(home)},
    )
    target = payload.json_target("aegis-demo", "/v2/models/demo/infer")
    return Server("aegis-demo", proc, port, [target], log, metrics_model="demo")
