"""A torch.export program as a plain function of its inputs: its lifted graph, weights bound.

`ExportedProgram.module()` wraps the graph in a module whose every call flattens and unflattens
the inputs as pytrees, checks them against the export's shape constraints in a forward pre-hook,
and fetches each of its weights through a chain of `nn.Module.__getattr__` calls: under torch 2.13
that costs a deep model 1.4-3x its eager time per batch. The lifted graph takes the weights as
arguments instead, so binding them once leaves only the graph's own ops. The checks the pre-hook
made are the server's (the signature's shapes and datatypes, and the export's limits, before a
request is queued), so what the model accepts does not change.

`move_to_device_pass` rewrites the graph's device arguments as well as moving its weights, so
tensors the graph makes itself (a mask's `arange`, an RNN's initial state) are made on the device.
A graph that mutates its buffers or threads effect tokens runs through `module()`, which applies
those effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.export.passes
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind, OutputKind

_BOUND_INPUTS = frozenset({InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR})


def output_names(program: torch.export.ExportedProgram) -> tuple[str, ...] | None:
    """The keys of a model that returns a flat dict of tensors, in the graph's output order."""
    spec = program.call_spec.out_spec
    if spec is None or spec.type is not dict:
        return None
    # torch 2.13 has children() and deprecates children_specs, which is all that 2.9 has.
    children = spec.children() if hasattr(spec, "children") else spec.children_specs
    if all(child.is_leaf() for child in children):
        return tuple(str(key) for key in spec.context)
    return None


class ExportedForward:
    """Calls `program` on `device` with tensors in signature order; returns the outputs flat, in
    `order` (indexes into the graph's outputs) when given, else in the graph's order."""

    def __init__(
        self,
        program: torch.export.ExportedProgram,
        device: torch.device,
        order: Sequence[int] | None = None,
    ) -> None:
        if device.type != "cpu":
            program = torch.export.passes.move_to_device_pass(program, device)
            # The pass edits the graph's nodes; the graph module's code is generated from them.
            program.graph_module.recompile()
        signature = program.graph_signature
        self.lifted = all(
            spec.kind in _BOUND_INPUTS or spec.kind is InputKind.USER_INPUT
            for spec in signature.input_specs
        ) and all(spec.kind is OutputKind.USER_OUTPUT for spec in signature.output_specs)
        self._order = tuple(order) if order is not None else None
        # A graph that reads a tensor's value into Python (`.item()`) is not one static program.
        self.static = not any(
            "_local_scalar_dense" in str(node.target) for node in program.graph.nodes
        )
        if self.lifted:
            self._graph = program.graph_module.forward  # past Module.__call__: it has no hooks
            self._bound = tuple(
                _bound_tensor(program, spec.target)
                for spec in signature.input_specs
                if spec.kind in _BOUND_INPUTS
            )
            self._module = None
        else:
            self._module = program.module()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if self._module is None:
            outputs: Sequence[Any] = self._graph(*self._bound, *inputs)
        else:
            outputs = pytree.tree_leaves(self._module(*inputs))
        if self._order is None:
            return list(outputs)
        return [outputs[index] for index in self._order]


def _bound_tensor(program: torch.export.ExportedProgram, target: str | None) -> torch.Tensor:
    assert target is not None
    # Constants, and buffers saved as non-persistent, are not in the state dict.
    tensor: torch.Tensor = (
        program.state_dict[target] if target in program.state_dict else program.constants[target]
    )
    return tensor
