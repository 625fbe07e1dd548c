"""The built-in demo model: a small MLP exported with torch.export at first start.

Weights come from a fixed seed, so every machine serves the same function and the README's
outputs can be reproduced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.config import (
    AppConfig,
    DeclaredModel,
    ModelConfig,
    ServerConfig,
    StorageConfig,
    TensorDeclaration,
)

if TYPE_CHECKING:
    import torch

DEMO_NAME = "demo"
DEMO_INPUTS = 64
DEMO_OUTPUTS = 10
DEMO_SEED = 20261128


def demo_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("AEGIS_DEMO_DIR", Path(base) / "aegis" / "demo"))


def build_demo_module() -> torch.nn.Module:
    import torch

    generator = torch.Generator().manual_seed(DEMO_SEED)
    model = torch.nn.Sequential(
        torch.nn.Linear(DEMO_INPUTS, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, DEMO_OUTPUTS),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def export_demo_model(path: Path) -> Path:
    """Export the demo MLP to `path` (a .pt2 file) unless it is there already."""
    if path.exists():
        return path
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        build_demo_module(),
        (torch.zeros(2, DEMO_INPUTS),),
        dynamic_shapes=({0: batch},),
    )
    staging = path.with_name(f".{path.stem}.partial.pt2")
    torch.export.save(program, str(staging))
    staging.replace(path)
    return path


def demo_config(bind: str = "127.0.0.1:8080", grpc_bind: str = "127.0.0.1:8081") -> AppConfig:
    """Serve the demo model on the CPU from a local folder; no cloud account needed."""
    home = demo_home()
    artifact = export_demo_model(home / "model.pt2")
    model = ModelConfig(
        model_path=str(artifact),
        runtime="torch",
        device="cpu",
        max_batch_size=32,
        max_queue_delay_ms=2.0,
        inputs=(TensorDeclaration(name="input__0", datatype="FP32", shape=(-1, DEMO_INPUTS)),),
        outputs=(TensorDeclaration(name="output__0", datatype="FP32", shape=(-1, DEMO_OUTPUTS)),),
    )
    return AppConfig(
        server=ServerConfig(bind=(bind,), grpc_bind=(grpc_bind,)),
        storage=StorageConfig(cache_dir=str(home / "cache")),
        models=(DeclaredModel(DEMO_NAME, "1", model),),
    )
