"""Compile once per input shape, replay afterwards, for the `tpu` runtime.

Lazy PyTorch/XLA re-runs the model's Python forward and re-traces its graph on every batch before
`sync()` looks the compiled program up: on a deep model that host work is the whole cost (18 ms a
batch against 1-2 ms of execution, XLA:CPU). Here each input shape is traced once, through
torch_xla's dynamo bridge (`extract_internal`: the function `torch.compile(backend="openxla")` ends
in, without dynamo's guards or AOT autograd in front of it); later batches of that shape hand their
device tensors straight to the compiled program (`_run_cached_graph`).

Replay runs the graph that one trace recorded, so a trace that had to execute anything on its way
(an op that falls back to the CPU, a value the Python code branches on) cannot be replayed: the
caller serves that model lazily instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
import torch.utils._pytree as pytree

Program = Callable[..., list[torch.Tensor]]


def flat_outputs(result: Any, names: Sequence[str]) -> list[torch.Tensor]:
    """A model's outputs as a list in signature order (by name for a dict that has them all)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict) and all(name in result for name in names):
        return [result[name] for name in names]
    return list(pytree.tree_leaves(result))


class _Traced(torch.nn.Module):
    """What the bridge traces: the forward as a module of the inputs alone, outputs flat. The
    weights are not arguments: the trace finds them as device data and binds them for good."""

    xla_args: tuple[torch.Tensor, ...]  # the bridge's way of passing the example inputs

    def __init__(self, forward: Callable[..., Any], names: Sequence[str]) -> None:
        super().__init__()
        self.model = forward  # a Module registers as a submodule: the bridge checks its weights
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return flat_outputs(self.model(*inputs), self.names)


def trace_program(
    bridge: ModuleType,
    forward: Callable[..., Any],
    names: Sequence[str],
    device_inputs: Sequence[torch.Tensor],
) -> Program:
    """Trace `forward` on `device_inputs` and compile it; the program takes tensors of the same
    shapes and dtypes on the same device and returns the outputs in signature order."""
    traced = _Traced(forward, names)
    traced.xla_args = tuple(device_inputs)
    compiled = bridge.extract_internal(traced)
    single = len(names) == 1

    def program(*inputs: torch.Tensor) -> list[torch.Tensor]:
        result = compiled(*inputs)
        return [result] if single else list(result)

    return program
