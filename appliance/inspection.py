"""`aegis inspect ARTIFACT`: what a model file takes and returns, and a config table to serve it.

The artifact's own signature is read the way `check-config` reads it (no device, weights only
into host memory): names, datatypes, shapes, dynamic dimensions and the export's limits. Each
dynamic input dimension past the batch gets a name and buckets in the proposed `[[models]]` table
(powers of two within the export's limits), so the table serves on `tpu` and `jax` as well as
`torch`; the runtimes listed are those whose checks the table passes here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, ModelConfig, parse_config
from appliance.config.runtime_table import (
    artifact_format,
    artifact_suffixes,
    runtime_row,
    runtimes_loading,
)
from appliance.runtimes import ArtifactError, DeviceUnavailable, runtime_class
from appliance.tensors import DimLimit, Signature, TensorSpec

BATCH_CAP = 64  # the proposed max_batch_size when the export allows more
UNBOUNDED_CAP = 512  # the largest proposed bucket of a dimension the export does not bound
# Shorter lengths pad up to it: on tpu and jax every bucket is a compilation at warmup.
SMALLEST_SEQ_BUCKET = 16


def _device(runtime: str) -> str:
    """The device a runtime is inspected on: the CPU where it runs there, else its own."""
    devices = runtime_row(runtime).devices
    return "cpu" if "cpu" in devices else devices[0]


class InspectError(Exception):
    """The artifact cannot be inspected here; the message says why."""


@dataclass(frozen=True)
class _Axis:
    """A dynamic input dimension past the batch, as the table names it."""

    name: str
    low: int
    high: int | None


def inspect(path: Path) -> str:
    """The report `aegis inspect` prints for the artifact at `path`."""
    if path.suffix not in artifact_suffixes():
        known = ", ".join(artifact_suffixes())
        raise InspectError(f"{path.name}: unknown artifact format (want {known})")
    if not path.is_file():
        raise InspectError(f"{path}: no such file")
    if path.suffix == ".pt":
        return _torchscript_report(path)
    # The candidates in table order: the first is the one the proposed table names.
    candidates = runtimes_loading(path.suffix)
    found = _read(path, candidates[0])
    axes = _named_axes(found)
    table = _table(path, found, axes, candidates[0])
    servable = [(runtime, _serves(table, runtime, found, path)) for runtime in candidates]
    lines = [f"{path.name}: {artifact_format(path.suffix)}", "", "inputs:"]
    lines += [_describe(spec, found.limits, axes) for spec in found.inputs]
    lines += ["outputs:"]
    specs = {spec.name: spec for spec in found.inputs}
    follows = {
        specs[name].shape[axis]: named.name
        for (name, axis), named in axes.items()
        if isinstance(specs[name].shape[axis], str)
    }
    lines += [_describe_output(spec, follows) for spec in found.outputs]
    lines += ["", "runtimes:"]
    lines += [
        f"  {runtime}: {'serves it' if why is None else 'no: ' + why}" for runtime, why in servable
    ]
    lines += ["", "# A [[models]] table for it (runtime = " + " | ".join(candidates) + "):"]
    lines.append(_toml(table))
    return "\n".join(lines)


def _read(path: Path, runtime: str) -> Signature:
    config = ModelConfig.model_validate(
        {"model_path": str(path), "runtime": runtime, "device": _device(runtime)}
    )
    try:
        return runtime_class(runtime)(config, path).read_signature(path)
    except (ArtifactError, DeviceUnavailable) as error:
        raise InspectError(str(error)) from None


def _named_axes(found: Signature) -> dict[tuple[str, int], _Axis]:
    """A name for each dynamic input axis past the batch (one per export symbol), with its
    limits: `seq` for the first, `seq2`, ... for others; an ONNX dim_param keeps its name."""
    limits = {(limit.input, limit.axis): limit for limit in found.limits}
    by_symbol: dict[str, _Axis] = {}
    axes: dict[tuple[str, int], _Axis] = {}
    for spec in found.inputs:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if isinstance(dim, int) and dim != -1:
                continue
            symbol = dim if isinstance(dim, str) else f"{spec.name}:{axis}"
            if symbol not in by_symbol:
                limit = limits.get((spec.name, axis))
                named = isinstance(dim, str) and dim.isidentifier() and not limit
                count = len(by_symbol)
                name = str(dim) if named else ("seq" if count == 0 else f"seq{count + 1}")
                by_symbol[symbol] = _Axis(
                    name, limit.min if limit else 1, limit.max if limit else None
                )
            axes[(spec.name, axis)] = by_symbol[symbol]
    return axes


def _buckets(low: int, high: int | None, cap: int, smallest: int = 1) -> list[int]:
    """Powers of two from `smallest` (or `low`, if larger) up to the export's limit or `cap`,
    the top included."""
    top = max(min(high, cap) if high is not None else cap, low)
    start = max(low, min(smallest, top))
    sizes = [size for size in (2**power for power in range(20)) if start <= size < top]
    return [*sizes, top]


def _batch(found: Signature) -> tuple[int, list[int] | None]:
    """max_batch_size, and batch_buckets where the default ones fall outside the export's."""
    for limit in found.limits:
        if limit.axis == 0:
            buckets = _buckets(limit.min, limit.max, BATCH_CAP)
            return buckets[-1], (buckets if limit.min > 1 else None)
    if any(
        spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != -1
        for spec in found.inputs
    ):
        return 1, None  # a fixed batch
    return 32, None


def _table(
    path: Path, found: Signature, axes: dict[tuple[str, int], _Axis], runtime: str
) -> dict[str, Any]:
    """The proposed `[[models]]` table, as TOML's data."""
    max_batch, batch_buckets = _batch(found)
    table: dict[str, Any] = {
        "name": re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "model",
        "model_path": str(path.resolve()),
        "runtime": runtime,
        "device": _device(runtime),
        "max_batch_size": max_batch,
    }
    if batch_buckets:
        table["batch_buckets"] = batch_buckets
    if not axes:
        return table
    table["dims"] = {
        axis.name: _buckets(axis.low, axis.high, UNBOUNDED_CAP, smallest=SMALLEST_SEQ_BUCKET)
        for axis in axes.values()
    }
    table["inputs"] = []
    for spec in found.inputs:
        shape: list[int | str] = [-1]
        for axis, size in enumerate(spec.shape[1:], start=1):
            named = axes.get((spec.name, axis))
            shape.append(named.name if named else size if isinstance(size, int) else -1)
        table["inputs"].append({"name": spec.name, "datatype": spec.datatype, "shape": shape})
    return table


def _toml(table: dict[str, Any]) -> str:
    lines = ["[[models]]"]
    lines += [
        f"{key} = {json.dumps(value)}"
        for key, value in table.items()
        if key not in ("dims", "inputs")
    ]
    if "dims" in table:
        lines.append("[models.dims]")
        lines += [f"{name} = {json.dumps(sizes)}" for name, sizes in table["dims"].items()]
    for spec in table.get("inputs", ()):
        lines.append("[[models.inputs]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in spec.items()]
    return "\n".join(lines)


def _serves(table: dict[str, Any], runtime: str, found: Signature, path: Path) -> str | None:
    """None when `table`, set to `runtime`, passes that runtime's load checks; else why not."""
    data = {**table, "runtime": runtime, "device": _device(runtime)}
    try:
        config = parse_config({"models": [data]}).models[0].config
        served = runtime_class(runtime)(config, path)
        # One file, one signature: the runtimes of a format read it alike.
        served.settle_signature(found, path.name)
    except (ConfigError, ArtifactError, DeviceUnavailable) as error:
        return str(error)
    return None


def _describe(
    spec: TensorSpec, limits: Iterable[DimLimit], axes: dict[tuple[str, int], _Axis]
) -> str:
    shape = [dim if isinstance(dim, int) else -1 for dim in spec.shape]
    notes = []
    for limit in limits:
        if limit.input == spec.name:
            upper = limit.max if limit.max is not None else "any"
            what = "batch" if limit.axis == 0 else f"dimension {limit.axis}"
            notes.append(f"{what}: {limit.min} .. {upper}")
    for (name, axis), named in axes.items():
        if name == spec.name:
            notes.append(f"dimension {axis} is {named.name!r}")
    suffix = f"  ({'; '.join(notes)})" if notes else ""
    return f"  {spec.name}: {spec.datatype} {shape}{suffix}"


def _describe_output(spec: TensorSpec, follows: dict[Any, str]) -> str:
    shape = [dim if isinstance(dim, int) else -1 for dim in spec.shape]
    notes = [
        f"dimension {axis} is {follows[dim]!r}, cut back to each request's length"
        for axis, dim in enumerate(spec.shape)
        if axis > 0 and isinstance(dim, str) and dim in follows
    ]
    suffix = f"  ({'; '.join(notes)})" if notes else ""
    return f"  {spec.name}: {spec.datatype} {shape}{suffix}"


def _torchscript_report(path: Path) -> str:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise InspectError(f"{path.name}: not a TorchScript archive ({error})") from None
    arguments = [arg.name for arg in module.forward.schema.arguments[1:]]
    return "\n".join(
        [
            f"{path.name}: TorchScript",
            "",
            "inputs (forward's arguments; TorchScript records no datatypes or shapes): "
            + ", ".join(arguments),
            "outputs: not recorded",
            "",
            "runtimes: torch, tpu, with [[models.inputs]] and [[models.outputs]] declared "
            "(datatype and shape of each); export with torch.export (.pt2) to have them read "
            "from the file",
        ]
    )
