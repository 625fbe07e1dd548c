"""PyTorch on the CPU or a CUDA GPU: torch.export `.pt2` (preferred) and TorchScript `.pt`.

Neither loader unpickles arbitrary Python objects: `.pt2` is a serialized graph with tensor data,
and TorchScript's loader rebuilds only tensors and scripted code. A plain `torch.save` pickle
is refused because it is not a TorchScript archive.
"""

from __future__ import annotations

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
    exported_signature_as_declared,
    load_exported,
)
from appliance.runtimes.signature import check_batch_dims, merge_signature
from appliance.runtimes.torch_tensors import to_numpy, to_tensor
from appliance.tensors import Signature


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
        check_batch_dims(
            signature,
            self.config,
            artifact,
            remedy="export with a dynamic first dimension (torch.export.Dim)",
        )
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
