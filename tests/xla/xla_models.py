"""The XLA tier's models, with their eager CPU references (imports nothing that needs torch_xla)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch

from appliance.demo import DEMO_INPUTS, DEMO_OUTPUTS, build_demo_module, export_demo_model

SIGNATURE = {
    "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, DEMO_INPUTS]}],
    "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, DEMO_OUTPUTS]}],
}


class Standardized(torch.nn.Module):
    """The demo MLP behind a per-feature standardisation: buffers and a nested module, the parts
    of a TorchScript model that must each be moved to the XLA device."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.register_buffer("mean", torch.randn(DEMO_INPUTS, generator=generator))
        self.register_buffer("scale", torch.rand(DEMO_INPUTS, generator=generator) + 0.5)
        self.mlp = build_demo_module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) * self.scale)


class WithFallbackOp(torch.nn.Module):
    """The demo MLP followed by erfcx, an op PyTorch/XLA does not lower (it runs on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = build_demo_module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfcx(self.mlp(x))


# The eager CPU module behind each artifact: what served outputs must match.
REFERENCES: dict[str, Callable[[], torch.nn.Module]] = {
    "demo.pt2": build_demo_module,
    "standardized.pt": lambda: Standardized().eval(),
    "fallback.pt": lambda: WithFallbackOp().eval(),
}


def build_artifacts(root: Path) -> dict[str, Path]:
    """Every artifact of REFERENCES, exported or scripted by the running venv's torch."""
    for name in ("standardized.pt", "fallback.pt"):
        torch.jit.save(torch.jit.script(REFERENCES[name]()), str(root / name))
    export_demo_model(root / "demo.pt2")
    return {name: root / name for name in REFERENCES}


def eager(artifact: str, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast(np.ndarray, REFERENCES[artifact]()(torch.from_numpy(rows)).numpy())
