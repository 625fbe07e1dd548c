"""`Wide`, the model of the CPU-fallback routing test and bench: seven 512-wide layers, a few
milliseconds a batch of 16 on XLA:CPU, so a few clients sending full batches keep the device's
queue deep. Typed for the bench's strict mypy; imports nothing that needs torch_xla."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from appliance.demo import DEMO_INPUTS, DEMO_OUTPUTS

WIDTH = 512


class Wide(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        sizes = [DEMO_INPUTS, *[WIDTH] * 7, DEMO_OUTPUTS]
        layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
        with torch.no_grad():
            for layer in layers:
                std = (1 / layer.in_features) ** 0.5
                layer.weight.normal_(std=std, generator=generator)
                layer.bias.normal_(std=std, generator=generator)
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        output: torch.Tensor = self.layers[-1](x)
        return output


def export_wide(path: Path) -> Path:
    """`Wide` as a `.pt2` with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        Wide().eval(), (torch.zeros(2, DEMO_INPUTS),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    return path


def wide_eager(rows: np.ndarray) -> np.ndarray:
    """`Wide`'s outputs for `rows`, by eager CPU torch."""
    with torch.no_grad():
        output: np.ndarray = Wide().eval()(torch.from_numpy(rows)).numpy()
        return output
