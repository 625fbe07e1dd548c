"""Tiny torch.export artifacts for the deploy tier, and what they compute, on the host."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

INPUTS = 4
OUTPUTS = 2


def export_linear(path: Path, seed: int) -> Path:
    """A Linear(4, 2) with weights from `seed`, exported with a dynamic batch dimension."""
    generator = torch.Generator().manual_seed(seed)
    module = torch.nn.Linear(INPUTS, OUTPUTS)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    example = (torch.zeros(2, INPUTS),)
    program = torch.export.export(
        module, example, dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def expected(path: Path, rows: list[Any]) -> list[float]:
    """The artifact's output for `rows` (a batch, nested lists), flattened as V2 JSON carries it."""
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return cast(
            "list[float]", module(torch.tensor(rows, dtype=torch.float32)).flatten().tolist()
        )


CNN_INPUT = (3, 8, 8)


class SmallCnn(torch.nn.Module):
    """A 64-channel Conv2d, ReLU, global average pool and Linear(64, 2): the layers that oneDNN
    builds at run time (W^X-protected memory breaks them: "could not create a primitive")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(CNN_INPUT[0], 64, kernel_size=3, padding=1)
        self.head = torch.nn.Linear(64, OUTPUTS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(images)).mean(dim=(2, 3))
        return cast(torch.Tensor, self.head(features))


def export_cnn(path: Path, seed: int) -> Path:
    """SmallCnn with weights from `seed`, exported with a dynamic batch dimension."""
    torch.manual_seed(seed)
    module = SmallCnn().eval()
    example = (torch.zeros(2, *CNN_INPUT),)
    program = torch.export.export(
        module, example, dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def cnn_images(count: int, seed: int) -> list[list[list[list[float]]]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *CNN_INPUT, generator=generator).tolist()
