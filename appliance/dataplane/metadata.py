"""A served model as the protocol describes it: V2 model metadata and Triton's model config, as
plain dicts that every transport renders in its own format."""

from __future__ import annotations

from typing import Any

from appliance.config.runtime_table import runtime_row
from appliance.repository import ServedModel
from appliance.tensors import TensorSpec

_TRITON_TYPES = {"BYTES": "TYPE_STRING"}


def protocol_shape(spec: TensorSpec) -> list[int]:
    """`spec`'s shape as the protocol states it: fixed sizes, and -1 for "any size" (a named
    dimension is one: its length is the request's, up to its largest bucket)."""
    return [dim if isinstance(dim, int) else -1 for dim in spec.shape]


def platform(model: ServedModel) -> str:
    """What serves the model, in Triton's words: its runtime and artifact format together."""
    served = runtime_row(model.runtime_name).artifact(model.artifact_suffix)
    return served.platform if served is not None else model.runtime_name


def model_metadata(model: ServedModel, versions: list[str]) -> dict[str, Any]:
    """`model`'s metadata; `versions` are every version of its name that serves, as Triton lists
    them whichever version was asked for."""
    return {
        "name": model.name,
        "versions": versions,
        "platform": platform(model),
        "inputs": [spec.to_json() for spec in model.signature.inputs],
        "outputs": [spec.to_json() for spec in model.signature.outputs],
        "parameters": _parameters(model),
    }


def _parameters(model: ServedModel) -> dict[str, Any]:
    parameters: dict[str, Any] = {"device": model.device, "runtime": model.runtime_name}
    if model.config.dims:
        parameters["dims"] = {name: list(sizes) for name, sizes in model.config.dims.items()}
    if model.signature.limits:
        parameters["dimension_limits"] = [limit.to_json() for limit in model.signature.limits]
    return parameters


def _triton_tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "data_type": _TRITON_TYPES.get(spec.datatype, f"TYPE_{spec.datatype}"),
            "dims": protocol_shape(spec)[1:],
        }
        for spec in specs
    ]


def triton_config(model: ServedModel) -> dict[str, Any]:
    """The subset of Triton's model config that tritonclient and perf_analyzer read."""
    config = model.config
    gpu = model.device.startswith("cuda")
    return {
        "name": model.name,
        "platform": platform(model),
        "backend": model.runtime_name,
        "max_batch_size": config.max_batch_size,
        "input": _triton_tensors(model.signature.inputs),
        "output": _triton_tensors(model.signature.outputs),
        "dynamic_batching": {
            "preferred_batch_size": list(config.batch_buckets),
            "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
        },
        "instance_group": [
            {"count": config.max_concurrency, "kind": "KIND_GPU" if gpu else "KIND_CPU"}
        ],
    }
