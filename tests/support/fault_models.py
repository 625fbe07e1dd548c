"""Models that misbehave on purpose, as TorchScript artifacts (`.pt` needs a declared signature)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tests.support.config import model_table, tensor_table
from tests.support.models import script_pt


class NonFinite(torch.nn.Module):
    """log(x) beside 1/x: NaN, -inf and inf out of ordinary finite inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x), 1.0 / x], dim=1)


def nonfinite_table(root: Path, extra: str = "") -> str:
    """A [[models]] table for NonFinite: x FP32 [-1, 2] in, y FP32 [-1, 4] out."""
    path = script_pt(NonFinite(), root / "nonfinite.pt")
    return (
        model_table("nonfinite", path, extra)
        + tensor_table("inputs", "x", "FP32", [-1, 2])
        + tensor_table("outputs", "y", "FP32", [-1, 4])
    )


def declared_table(name: str, path: Path, width: int, extra: str = "") -> str:
    """A [[models]] table for a TorchScript model taking and giving FP32 [-1, width]."""
    return (
        model_table(name, path, extra)
        + tensor_table("inputs", "x", "FP32", [-1, width])
        + tensor_table("outputs", "y", "FP32", [-1, width])
    )


class ReturnsANumber(torch.nn.Module):
    """Returns a tensor and a plain int where two tensors are declared."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 3


class ReturnsAnotherName(torch.nn.Module):
    """Returns its output under a name that no declaration uses."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": x * 2.0}


class WarnsOnLargeInputs(torch.nn.Module):
    """x + x, with a Python warning (through torch's warning handler) for any |x| over 1000."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 1000.0).any()):
            warnings.warn("input magnitude above 1000", stacklevel=2)
        return x + x


class Doubles(torch.nn.Module):
    """x + x: keeps the input's datatype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x
