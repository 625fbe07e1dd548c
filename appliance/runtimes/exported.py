"""A torch.export program as a plain function of its inputs: its lifted graph, weights bound.

`ExportedProgram.module()` wraps the graph in a module whose every call flattens and unflattens
the inputs as pytrees, checks them against the export's shape constraints in a forward pre-hook,
and fetches each of its weights through a chain of `nn.Module.__getattr__` calls: under torch 2.13
that costs a deep model 1.4-3x its eager time per batch. The lifted graph takes the weights as
arguments instead, so binding them once leaves only the graph's own ops. The checks the pre-hook
made are the server's (the signature's shapes and datatypes, and the export's limits, before a
request is queued), so what the model accepts does not change.

A program whose outputs (or inputs) are pytree nodes of classes this process does not know, such as
a Hugging Face `ModelOutput`, cannot be loaded by torch until the class is registered under the
name it was saved with. `load_program` registers a stand-in for each such name, a dict of the
node's children by its keys, so the outputs are named by those keys (`last_hidden_state`,
`pooler_output`) without importing the library that defined the class.

`move_to_device_pass` rewrites the graph's device arguments as well as moving its weights, so
tensors the graph makes itself (a mask's `arange`, an RNN's initial state) are made on the device.
A graph that mutates its buffers or threads effect tokens runs through `module()`, which applies
those effects.

`load_exported` and `exported_signature` are how every runtime that serves `.pt2` files (torch,
tpu, jax) loads one as an artifact and reads its signature from the graph.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.export.passes
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind, OutputKind

from appliance.config import ModelConfig
from appliance.runtimes.base import ArtifactError
from appliance.runtimes.signature import output_order
from appliance.runtimes.torch_tensors import TORCH_TO_DATATYPE
from appliance.tensors import DimLimit, Signature, TensorSpec

_BOUND_INPUTS = frozenset({InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR})


class ForeignNode(dict[str, Any]):
    """Stands in for a pytree node class a saved program names and this process lacks: its
    children by key, in the saved order. One subclass per saved class name."""

    saved_as = ""


_stand_ins: dict[str, type[ForeignNode]] = {}
_registering = threading.Lock()


class ProgramLoadError(Exception):
    """torch.export could not load the file; the message is torch's own cause."""


def load_program(path: Path) -> torch.export.ExportedProgram:
    """torch.export.load, with a stand-in registered for each pytree class the file names that
    this process does not know; ProgramLoadError carries the cause torch only logs."""
    _register_stand_ins(_saved_node_types(path))
    causes = _CauseCatcher()
    logger = logging.getLogger("torch.export")
    logger.addHandler(causes)
    try:
        return torch.export.load(str(path))
    except Exception as error:
        raise ProgramLoadError(causes.cause() or f"{type(error).__name__}: {error}") from None
    finally:
        logger.removeHandler(causes)


class _CauseCatcher(logging.Handler):
    """Keeps the innermost exception torch.export logs while it fails to load a file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])

    def cause(self) -> str | None:
        if not self.errors:
            return None
        error = self.errors[-1]
        while error.__cause__ is not None or error.__context__ is not None:
            error = error.__cause__ or error.__context__  # type: ignore[assignment]
        return f"{type(error).__name__}: {error}"


def _saved_node_types(path: Path) -> set[str]:
    """The pytree node class names in the file's serialized input and output specs."""
    names: set[str] = set()
    try:
        with zipfile.ZipFile(path) as archive:
            documents = [
                archive.read(name)
                for name in archive.namelist()
                if "/models/" in name and name.endswith(".json")
            ]
    except (OSError, zipfile.BadZipFile):
        return names  # torch.export.load says what is wrong with the file
    for document in documents:
        try:
            for text in _strings(json.loads(document)):
                if text.startswith("[1, {"):  # a treespec: [protocol version, its JSON]
                    names.update(_node_types(json.loads(text)[1]))
        except ValueError:
            continue
    return names


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def _node_types(node: Any) -> Iterator[str]:
    if not isinstance(node, dict):
        return
    if isinstance(node.get("type"), str):
        yield node["type"]
    for child in node.get("children_spec") or ():
        yield from _node_types(child)


def _register_stand_ins(names: set[str]) -> None:
    with _registering:
        known = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE
        for name in sorted(names - set(known)):
            stand_in = type(name.rsplit(".", 1)[-1], (ForeignNode,), {"saved_as": name})
            pytree.register_pytree_node(
                stand_in,
                _flatten,
                _unflatten(stand_in),
                serialized_type_name=name,
                to_dumpable_context=json.dumps,
                from_dumpable_context=json.loads,
                flatten_with_keys_fn=_flatten_with_keys,
            )
            _stand_ins[name] = stand_in


def _flatten(node: ForeignNode) -> tuple[list[Any], list[str]]:
    return list(node.values()), list(node.keys())


def _flatten_with_keys(node: ForeignNode) -> tuple[list[tuple[Any, Any]], list[str]]:
    return [(pytree.MappingKey(key), value) for key, value in node.items()], list(node.keys())


def _unflatten(stand_in: type[ForeignNode]) -> Any:
    def unflatten(values: Any, context: Any) -> ForeignNode:
        keys = context if _all_names(context) else [f"output__{i}" for i in range(len(values))]
        return stand_in(zip(keys, values, strict=True))

    return unflatten


def _all_names(context: Any) -> bool:
    return isinstance(context, list) and all(isinstance(key, str) for key in context)


def output_names(program: torch.export.ExportedProgram) -> tuple[str, ...] | None:
    """The keys of a model that returns a flat dict of tensors (or a node this process knows only
    by a stand-in, such as a Hugging Face `ModelOutput`), in the graph's output order."""
    spec = program.call_spec.out_spec
    if spec is None:
        return None
    keyed = spec.type is dict or (
        isinstance(spec.type, type)
        and issubclass(spec.type, ForeignNode)
        and _all_names(spec.context)
    )
    if not keyed:
        return None
    # torch 2.13 has children() and deprecates children_specs, which is all that 2.9 has.
    children = spec.children() if hasattr(spec, "children") else spec.children_specs
    if all(child.is_leaf() for child in children):
        return tuple(str(key) for key in spec.context)
    return None


def _spec_from_meta(name: str, value: Any) -> TensorSpec:
    """A TensorSpec from an exported graph node's fake tensor; a symbolic dimension is its
    symbol's expression (`s27`, `2*s27`), which `merge_signature` resolves."""
    if not isinstance(value, torch.Tensor):
        raise ArtifactError(f"{name}: exported programs must take and return tensors only")
    try:
        datatype = TORCH_TO_DATATYPE[value.dtype]
    except KeyError:
        raise ArtifactError(f"{name}: dtype {value.dtype} has no protocol datatype") from None
    shape = tuple(dim if isinstance(dim, int) else str(dim.node.expr) for dim in value.shape)
    return TensorSpec(name, datatype, shape)


def _limits_from_meta(name: str, value: torch.Tensor, ranges: dict[Any, Any]) -> list[DimLimit]:
    """The export's range for each axis of `value` that is a plain symbol (`Dim(min, max)`)."""
    limits: list[DimLimit] = []
    for axis, dim in enumerate(value.shape):
        if not isinstance(dim, torch.SymInt):
            continue
        symbol = dim.node.expr
        if symbol not in ranges:
            continue  # a derived size (e.g. 2 * seq): its symbol's own axis carries the limit
        bounds = ranges[symbol]
        upper = int(bounds.upper) if bounds.upper.is_finite else None
        limits.append(DimLimit(name, axis, str(symbol), int(bounds.lower), upper))
    return limits


def exported_signature(program: torch.export.ExportedProgram) -> Signature:
    """Inputs, outputs and dimension limits of a torch.export program, by its placeholder and
    output nodes and its range constraints. A model that returns a dict names its outputs by
    the dict's keys. Dynamic dimensions are left as the export's symbols (see `signature`)."""
    names = output_names(program)
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = []
    outputs: list[TensorSpec] = []
    limits: list[DimLimit] = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            inputs.append(_spec_from_meta(node.name, value))
            limits += _limits_from_meta(node.name, value, program.range_constraints)
        elif node.op == "output":
            values = node.args[0]
            for index, out in enumerate(values):
                name = names[index] if names else f"output__{index}"
                outputs.append(_spec_from_meta(name, out.meta.get("val")))
    return Signature(tuple(inputs), tuple(outputs), tuple(limits))


def exported_signature_as_declared(
    program: torch.export.ExportedProgram, config: ModelConfig
) -> tuple[Signature, tuple[int, ...] | None]:
    """The program's signature with its outputs in the order the config declares them, and
    that order (indexes into the graph's outputs; None: the graph's own)."""
    found = exported_signature(program)
    order = output_order(found, config)
    if order is not None:
        found = dataclasses.replace(found, outputs=tuple(found.outputs[i] for i in order))
    return found, order


def load_exported(path: Path) -> torch.export.ExportedProgram:
    try:
        return load_program(path)
    except ProgramLoadError as error:
        raise ArtifactError(f"{path.name}: not a loadable torch.export program: {error}") from None


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
