"""Tiny torch.export artifacts for the deploy tier, and what they compute, on the host."""

from __future__ import annotations

from pathlib import Path

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


def expected(path: Path, rows: list[list[float]]) -> list[float]:
    """The artifact's output for `rows`, flattened as V2 JSON carries it."""
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return module(torch.tensor(rows, dtype=torch.float32)).flatten().tolist()
