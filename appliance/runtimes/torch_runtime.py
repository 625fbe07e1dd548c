"""PyTorch on the CPU or a CUDA GPU: torch.export `.pt2` (preferred) and TorchScript `.pt`.

Neither loader unpickles arbitrary Python objects: `.pt2` is a serialized graph with tensor data,
and TorchScript's loader rebuilds only tensors and scripted code. A plain `torch.save` pickle
is refused because it is not a TorchScript archive.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from appliance.config import ModelConfig
from appliance.runtimes.artifacts import resolve_artifact
from appliance.runtimes.base import (
    ArtifactError,
    DeviceUnavailable,
    ModelExecutionError,
    Runtime,
    check_buckets_fit,
)
from appliance.runtimes.exported import (
    ExportedForward,
    ProgramLoadError,
    load_program,
    output_names,
)
from appliance.runtimes.signature import merge_signature, output_order
from appliance.runtimes.torch_tensors import TORCH_TO_DATATYPE, to_numpy, to_tensor
from appliance.tensors import DimLimit, Signature, TensorSpec


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


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(
        self,
        config: ModelConfig,
        artifact: Path,
        *,
        device: str | None = None,
        compilation_cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            config, artifact, device=device, compilation_cache_dir=compilation_cache_dir
        )
        self._forward: Callable[..., Any] | None = None
        self._torch_device = torch.device("cpu")

    def load(self) -> None:
        path = resolve_artifact(self.artifact)
        self._torch_device = self._open_device()
        self.device = str(self._torch_device)
        if path.suffix == ".pt2":
            module, found = self._load_exported(path)
        else:
            module, found = self._load_torchscript(path), Signature((), ())
        self.signature = self.settle_signature(found, path.name)
        self._forward = module

    def read_signature(self, path: Path) -> Signature:
        if path.suffix != ".pt2":
            return Signature((), ())  # TorchScript carries none: the declaration is all there is
        found, _order = exported_signature_as_declared(load_exported(path), self.config)
        return found

    def settle_signature(self, found: Signature, artifact: str) -> Signature:
        signature = merge_signature(found, self.config, artifact)
        self._check_batch_dims(signature, artifact)
        check_buckets_fit(signature, self.config, artifact)
        self._check_no_bytes(signature, artifact)
        return signature

    def _open_device(self) -> torch.device:
        if self.requested_device == "cuda":
            if not torch.cuda.is_available():
                raise DeviceUnavailable("device 'cuda': no CUDA GPU is visible to this process")
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _load_exported(self, path: Path) -> tuple[Callable[..., Any], Signature]:
        program = load_exported(path)
        found, order = exported_signature_as_declared(program, self.config)
        return ExportedForward(program, self._torch_device, order), found

    def _load_torchscript(self, path: Path) -> torch.jit.ScriptModule:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module: torch.jit.ScriptModule = torch.jit.load(
                    str(path), map_location=self._torch_device
                )
        except Exception as error:
            raise ArtifactError(
                f"{path.name}: not a TorchScript archive ({type(error).__name__}); "
                "plain pickles are never loaded - save with torch.export (.pt2) or torch.jit.save"
            ) from None
        return module.eval()

    def _check_batch_dims(self, signature: Signature, artifact: str) -> None:
        for spec in (*signature.inputs, *signature.outputs):
            if spec.shape and spec.shape[0] != -1 and self.config.max_batch_size > 1:
                raise ArtifactError(
                    f"{artifact}: {spec.name!r} has a fixed batch dimension {spec.shape[0]}; "
                    "export with a dynamic first dimension (torch.export.Dim)"
                )

    def _check_no_bytes(self, signature: Signature, artifact: str) -> None:
        # A PyTorch model takes and returns tensors: caught here, a BYTES declaration is a load
        # error naming the tensor rather than a 500 on every request.
        for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
            for spec in specs:
                if spec.datatype == "BYTES":
                    raise ArtifactError(
                        f"{artifact}: {kind} {spec.name!r} is declared BYTES; the torch runtime "
                        "takes and returns tensors only (the onnx runtime serves string tensors)"
                    )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._forward is not None and self.signature is not None, "load() first"
        args = [
            to_tensor(inputs[spec.name], spec.datatype).to(self._torch_device, non_blocking=True)
            for spec in self.signature.inputs
        ]
        try:
            with torch.no_grad():
                result = self._forward(*args)
        except Exception as error:
            raise ModelExecutionError(f"{type(error).__name__}: {error}") from error
        return self._name_outputs(result)

    def _name_outputs(self, result: Any) -> dict[str, np.ndarray]:
        assert self.signature is not None
        specs = self.signature.outputs
        if isinstance(result, torch.Tensor):
            values: Sequence[Any] = (result,)
        elif isinstance(result, dict):
            # Named outputs are taken by name, never by position: a name the declaration does not
            # know is a mismatch to report, not an output to rename.
            missing = [spec.name for spec in specs if spec.name not in result]
            if missing:
                raise ModelExecutionError(
                    f"the model returned outputs named {sorted(result)}; "
                    f"the signature's {missing} are not among them"
                )
            values = [result[spec.name] for spec in specs]
        elif isinstance(result, list | tuple) and all(isinstance(v, torch.Tensor) for v in result):
            values = result  # the runtimes' own flat outputs: a pytree walk costs ~10 us a batch
        else:
            values = pytree.tree_leaves(result)
        if len(values) != len(specs):
            raise ModelExecutionError(
                f"the model returned {len(values)} outputs, the signature names {len(specs)}"
            )
        return {spec.name: to_numpy(value) for spec, value in zip(specs, values, strict=True)}

    def close(self) -> None:
        self._forward = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()
