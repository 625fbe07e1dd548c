"""The `jax` runtime: JAX on a Cloud TPU or on the CPU, for JAX models and for PyTorch models.

- `.jax`: a serialized `jax.export.Exported`. Its signature is its avals: the leading dimension is
  the batch (a symbolic dimension), other symbolic dimensions are named dimensions of the config
  (`[models.dims]`), fixed ones stay fixed. Inputs are its flattened arguments, outputs its
  flattened results, named by the config where declared, else `input__N` / `output__N`. It must have
  been exported for the platform it runs on (`platforms=["tpu", "cpu"]` covers both).
- `.pt2`: a torch.export program, run as a pure JAX function through torchax (every aten op lowered
  to JAX, no torch at serving time). Its weights are moved to the device once, at load, and passed
  to the jitted function as arguments, not baked into each program.

Every distinct input shape compiles a program, so the batcher pads batches to the configured
buckets and warmup compiles each bucket combination once; a compilation after `finish_warmup` is
logged with the shapes that caused it and counted. JAX runs with 64-bit types off (its default,
and what a TPU wants): INT64/FP64 inputs of a `.pt2` compute in 32 bits, and outputs are returned
in the datatype the signature declares.

JAX itself is set up for the whole process by `jax_process` (platforms, device, cache); jax and
torchax are imported only in `load`, so a host without them imports this module unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from appliance.config import ModelConfig
from appliance.runtimes import jax_process
from appliance.runtimes.artifacts import resolve_artifact
from appliance.runtimes.base import (
    NO_DIMS,
    ArtifactError,
    CompileLedger,
    DeviceUnavailable,
    ModelExecutionError,
    Runtime,
    RuntimeStats,
    check_buckets_fit,
)
from appliance.runtimes.signature import check_batch_dims, merge_signature
from appliance.tensors import Signature, TensorSpec, numpy_dtype

log = structlog.get_logger("aegis.runtimes")

# JAX dtype names (numpy's, plus ml_dtypes' bfloat16) -> protocol datatypes.
_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
}


@dataclasses.dataclass(frozen=True)
class _Program:
    """A loaded artifact: call it with device arrays in signature order, get output leaves back."""

    call: Callable[..., Sequence[Any]]
    signature: Signature
    weights: Sequence[Any] = ()  # device arrays the program holds (freed on close)


class JaxRuntime(Runtime):
    name = "jax"

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
        self._jax: Any = None
        self._device: Any = None
        self._program: _Program | None = None
        self._ledger = CompileLedger()

    def load(self) -> None:
        # The device first: without it the policy is CPU fallback, whatever the artifact holds.
        process = jax_process.configured()
        self._jax = process.jax
        self._device = process.device(self.requested_device)
        self.device = f"jax:{self._device.platform}:{self._device.id}"
        path = resolve_artifact(self.artifact)
        with jax_process.collecting() as built:
            if path.suffix == ".jax":
                program = self._load_exported(path)
            elif path.suffix == ".pt2":
                program = self._load_torch_export(path)
            else:
                raise ArtifactError(
                    f"{path.name}: runtime 'jax' loads .jax (jax.export) and .pt2 (torch.export)"
                )
        self._record(built, 0.0, {})
        self.signature = self.settle_signature(program.signature, path.name)
        self._program = program
        log.info("jax_model_loaded", artifact=path.name, device=self.device)

    def read_signature(self, path: Path) -> Signature:
        if path.suffix == ".pt2":
            from appliance.runtimes.exported import exported_signature, load_exported

            return exported_signature(load_exported(path))
        try:
            import jax
            import jax.export
        except ImportError as error:
            raise DeviceUnavailable(
                f"{path.name}: reading a .jax file needs jax ({error}); install the "
                "aegis_tpu_runtime role's jax flavor (requirements-jax.txt)"
            ) from None
        return _exported_signature(_deserialize(jax, path), path.name)

    def settle_signature(self, found: Signature, artifact: str) -> Signature:
        signature = merge_signature(found, self.config, artifact)
        check_batch_dims(
            signature, self.config, artifact, remedy="export with a symbolic first dimension"
        )
        self._check_dims_bucketed(signature, artifact)
        check_buckets_fit(signature, self.config, artifact)
        return signature

    def _load_exported(self, path: Path) -> _Program:
        jax = self._jax
        exported = _deserialize(jax, path)
        platform = self._device.platform
        if platform not in exported.platforms:
            raise ArtifactError(
                f"{path.name}: exported for {', '.join(exported.platforms)}, this process runs "
                f"on {platform}: export with platforms=['tpu', 'cpu']"
            )
        if exported.nr_devices != 1:
            raise ArtifactError(
                f"{path.name}: exported for {exported.nr_devices} devices; Aegis runs a model "
                "on one device per process"
            )
        signature = _exported_signature(exported, path.name)
        in_tree = exported.in_tree
        tree_util = jax.tree_util

        def call(*leaves: Any) -> Sequence[Any]:
            args, kwargs = tree_util.tree_unflatten(in_tree, leaves)
            results: Sequence[Any] = tree_util.tree_leaves(exported.call(*args, **kwargs))
            return results

        return _Program(jax.jit(call), signature)

    def _load_torch_export(self, path: Path) -> _Program:
        try:
            import torch
            import torchax
            import torchax.export
            from torchax.ops.mappings import t2j
        except Exception as error:  # ImportError, or torchax against a torch it cannot import with
            raise DeviceUnavailable(
                f"torchax cannot be imported ({type(error).__name__}: {error}); install "
                "the aegis_tpu_runtime role's jax flavor (requirements-jax.txt)"
            ) from None
        from appliance.runtimes.exported import exported_signature, load_exported

        program = load_exported(path)
        signature = exported_signature(program)
        _views_as_reshapes(program, torch)
        try:
            # torchax registers its aten lowerings when its environment is first made.
            torchax.default_env()
            _names, states, function = torchax.export.exported_program_to_jax(
                program, export_raw=True
            )
        except Exception as error:  # an op torchax has no lowering for, and the like
            raise ArtifactError(
                f"{path.name}: torchax cannot convert this program ({type(error).__name__}: "
                f"{_first_line(error)}); runtime 'tpu' (PyTorch/XLA) or 'torch' serves "
                "torch.export programs as they are"
            ) from None
        with torch.no_grad():
            weights = self._jax.device_put([t2j(state.detach()) for state in states], self._device)
        jitted = self._jax.jit(function)

        def call(*leaves: Any) -> Sequence[Any]:
            outputs: Sequence[Any] = jitted(weights, leaves)
            return outputs

        return _Program(call, signature, weights)

    def _check_dims_bucketed(self, signature: Signature, artifact: str) -> None:
        """XLA compiles one program per shape: every dynamic input dimension past the batch must
        be a named dimension with buckets in [models.dims]."""
        for spec in signature.inputs:
            for axis, dim in enumerate(spec.shape[1:], start=1):
                if dim == -1:
                    raise ArtifactError(
                        f"{artifact}: input {spec.name!r} dimension {axis} is dynamic without "
                        "buckets; runtime 'jax' compiles one program per shape: declare the "
                        'input with a name for it (e.g. "seq") and its buckets in [models.dims]'
                    )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._program is not None and self.signature is not None, "load() first"
        specs = self.signature.inputs
        shapes = {spec.name: tuple(inputs[spec.name].shape) for spec in specs}
        started = time.perf_counter()
        with jax_process.collecting() as built:
            try:
                host = [_to_jax_host(inputs[spec.name], spec.datatype) for spec in specs]
                # Host arrays go straight into the jitted call, which moves them to the device
                # as it runs: one trip through JAX (and one GIL hand-back) per batch, not two.
                with self._jax.default_device(self._device):
                    leaves = self._program.call(*host)
                outputs = self._name_outputs(leaves)
            except Exception as error:
                raise ModelExecutionError(f"{type(error).__name__}: {error}") from error
            finally:
                self._record(built, time.perf_counter() - started, shapes)
        return outputs

    def _name_outputs(self, leaves: Sequence[Any]) -> dict[str, np.ndarray]:
        assert self.signature is not None
        specs = self.signature.outputs
        if len(leaves) != len(specs):
            raise ModelExecutionError(
                f"the model returned {len(leaves)} outputs, the signature names {len(specs)}"
            )
        return {
            spec.name: _to_protocol(leaf, spec.datatype)
            for spec, leaf in zip(specs, leaves, strict=True)
        }

    def warmup(self, batch_size: int, dims: Mapping[str, int] = NO_DIMS) -> None:
        compiled_before = self._ledger.compiled_so_far()
        super().warmup(batch_size, dims)
        seconds = self._ledger.compile_seconds_since(compiled_before)
        log.info(
            "jax_warmup",
            artifact=self.artifact.name,
            batch_size=batch_size,
            dims=dict(dims),
            compilations=len(seconds),
            compile_seconds=round(sum(seconds), 4),
        )

    def finish_warmup(self) -> None:
        self._ledger.end_warmup()
        totals = self.stats()
        log.info(
            "jax_warm",
            artifact=self.artifact.name,
            device=self.device,
            compilations=totals.compilations,
            cached_compilations=totals.cached_compilations,
            compile_seconds=round(sum(totals.compile_seconds), 4),
        )

    def stats(self) -> RuntimeStats:
        return self._ledger.stats()

    def _record(
        self,
        built: jax_process.Compilations,
        elapsed: float,
        shapes: dict[str, tuple[int, ...]],
    ) -> None:
        """Attribute what JAX built during one call to this runtime; a compile is never silent."""
        after_warmup = self._ledger.record(
            compiled=len(built.seconds),
            cached=built.cache_hits,
            compile_seconds=built.seconds,
            elapsed=elapsed,
        )
        if after_warmup:
            log.warning(
                "jax_compiled_after_warmup",
                cause="warmup did not cover this batch",
                artifact=self.artifact.name,
                input_shapes={name: list(shape) for name, shape in shapes.items()},
                compilations=after_warmup,
                compile_seconds=round(sum(built.seconds), 4),
            )

    def close(self) -> None:
        program, self._program = self._program, None
        if program is not None:
            for weight in program.weights:
                weight.delete()


def _views_as_reshapes(program: Any, torch: Any) -> None:
    """Turn the program's `aten.view` calls into `aten.reshape`, in place.

    torchax first re-traces the program through torch's decompositions, and there torch's stride
    rules can reject a view the export recorded: a view of a tensor that a decomposition leaves
    non-contiguous (GPT-2's attention output: "Cannot view a tensor with shape [s43, s53, 128]
    and strides ..."). `reshape` is that same view wherever a view is legal, and a copy where it
    is not; JAX arrays have no strides, so both lower to the same JAX reshape.
    """
    view, reshape = torch.ops.aten.view.default, torch.ops.aten.reshape.default
    changed = False
    for node in program.graph_module.graph.nodes:
        if node.op == "call_function" and node.target is view:
            node.target = reshape
            changed = True
    if changed:
        program.graph_module.recompile()


def _first_line(error: Exception) -> str:
    """The message of an error from an FX re-trace, without the graph dump it appends."""
    return str(error).strip().split("\n", 1)[0]


def _exported_signature(exported: Any, artifact: str) -> Signature:
    """Inputs and outputs of a `jax.export.Exported`, from its flattened avals."""
    batch = None
    if exported.in_avals and exported.in_avals[0].shape:
        first = exported.in_avals[0].shape[0]
        batch = None if isinstance(first, int) else str(first)
    inputs = tuple(
        _spec(f"input__{index}", aval, batch, artifact, is_input=True)
        for index, aval in enumerate(exported.in_avals)
    )
    outputs = tuple(
        _spec(f"output__{index}", aval, batch, artifact, is_input=False)
        for index, aval in enumerate(exported.out_avals)
    )
    return Signature(inputs, outputs)


def _spec(name: str, aval: Any, batch: str | None, artifact: str, *, is_input: bool) -> TensorSpec:
    try:
        datatype = _DATATYPES[str(aval.dtype)]
    except KeyError:
        raise ArtifactError(
            f"{artifact}: {name} has dtype {aval.dtype}, which has no protocol datatype"
        ) from None
    if datatype in ("INT64", "UINT64", "FP64"):
        raise ArtifactError(
            f"{artifact}: {name} is {aval.dtype}; JAX serves with 64-bit types off: export with "
            "32-bit inputs and outputs"
        )
    shape: list[int | str] = []
    for index, dim in enumerate(aval.shape):
        if isinstance(dim, int):
            shape.append(dim)
            continue
        symbol = str(dim)
        if index == 0 and symbol == batch:
            shape.append(-1)
        elif symbol.isidentifier() and symbol != batch:
            shape.append(symbol)  # a named dimension: its buckets come from [models.dims]
        elif is_input:
            raise ArtifactError(
                f"{artifact}: {name} dimension {index} is {symbol!r}; inputs take the batch "
                f"({batch!r}) first and plain symbolic dimensions or fixed sizes after it"
            )
        else:
            shape.append(symbol)  # derived from the inputs' sizes (e.g. 2*seq): see `signature`
    return TensorSpec(name, datatype, tuple(shape))


def _deserialize(jax: Any, path: Path) -> Any:
    try:
        return jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as error:
        raise ArtifactError(
            f"{path.name}: not a serialized jax.export.Exported ({type(error).__name__}: {error})"
        ) from None


def _to_jax_host(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BF16":
        import ml_dtypes

        return np.ascontiguousarray(array).view(ml_dtypes.bfloat16)
    return np.ascontiguousarray(array)


def _to_protocol(leaf: Any, datatype: str) -> np.ndarray:
    """A host copy of an output in the declared datatype (JAX computes 64-bit types in 32)."""
    array = np.asarray(leaf)
    if datatype == "BF16":
        return array.view(np.uint16)
    return array.astype(numpy_dtype(datatype), copy=False)
