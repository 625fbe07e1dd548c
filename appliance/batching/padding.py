"""Named dimensions: where they sit in a model's tensors, padding them up to their buckets, and
slicing outputs back to each request's own length.

A request's length along a named dimension (say "seq") is read off the first input that has it;
the model's checks have made sure every input that shares the name agrees. Requests whose lengths
fall in the same bucket share a batch, padded with each input's `pad_value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from appliance.tensors import PadValue, Signature, TensorSpec, float32_to_bf16

Tensors = dict[str, np.ndarray]
Axes = tuple[tuple[int, str], ...]  # (axis, dimension name)


@dataclass(frozen=True, slots=True)
class NamedDims:
    """The named dimensions of one model, and their buckets; empty for a model without any."""

    buckets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    inputs: Mapping[str, Axes] = field(default_factory=dict)
    outputs: Mapping[str, Axes] = field(default_factory=dict)
    pad_values: Mapping[str, PadValue] = field(default_factory=dict)

    @classmethod
    def of(cls, signature: Signature, buckets: Mapping[str, tuple[int, ...]]) -> NamedDims:
        return cls(
            buckets=dict(buckets),
            inputs={spec.name: spec.named_axes() for spec in signature.inputs if spec.named_axes()},
            outputs={
                spec.name: spec.named_axes() for spec in signature.outputs if spec.named_axes()
            },
            pad_values={spec.name: _pad_of(spec) for spec in signature.inputs},
        )

    def lengths(self, inputs: Tensors) -> dict[str, int]:
        """The request's own length along each named dimension."""
        found: dict[str, int] = {}
        for name, axes in self.inputs.items():
            array = inputs[name]
            for axis, dim in axes:
                found.setdefault(dim, array.shape[axis])
        return found

    def bucket_for(self, dim: str, length: int) -> int:
        for bucket in self.buckets[dim]:
            if bucket >= length:
                return bucket
        raise ValueError(f"{dim} = {length} is past the largest bucket ({self.buckets[dim][-1]})")

    def padded(self, lengths: Mapping[str, int]) -> dict[str, int]:
        """The bucket each length is padded up to."""
        return {dim: self.bucket_for(dim, length) for dim, length in lengths.items()}

    def inner_shape(
        self, name: str, shape: tuple[int, ...], padded: Mapping[str, int]
    ) -> tuple[int, ...]:
        """`shape` less its batch dimension, with each named axis at its bucket size."""
        inner = list(shape[1:])
        for axis, dim in self.inputs.get(name, ()):
            inner[axis - 1] = padded[dim]
        return tuple(inner)

    def slice_outputs(
        self, outputs: Tensors, start: int, stop: int, lengths: Mapping[str, int]
    ) -> Tensors:
        """Rows `start:stop` of every output, each named axis cut back to the request's length."""
        mine = {}
        for name, array in outputs.items():
            index: list[slice] = [slice(start, stop)]
            axes = self.outputs.get(name, ())
            if axes:
                index += [slice(None)] * (array.ndim - 1)
                for axis, dim in axes:
                    index[axis] = slice(0, lengths[dim])
            mine[name] = array[tuple(index)]
        return mine


def _pad_of(spec: TensorSpec) -> PadValue:
    """What padding of `spec` holds, as its array stores it: a BF16 value as its bit pattern."""
    if spec.datatype == "BF16":
        return int(float32_to_bf16(np.array([spec.pad_value], dtype=np.float32))[0])
    return spec.pad_value


def assemble(
    parts: list[Tensors], bucket: int, dims: NamedDims, padded: Mapping[str, int]
) -> Tensors:
    """Stack the callers' inputs into one batch of `bucket` rows, each named dimension at its
    bucket size; what no caller filled holds the input's pad value (empty strings for BYTES)."""
    batch: Tensors = {}
    for name, first in parts[0].items():
        shape = (bucket, *dims.inner_shape(name, first.shape, padded))
        pad = dims.pad_values.get(name, 0)
        if first.dtype == np.object_:
            out = np.full(shape, b"", dtype=np.object_)
        elif pad == 0:
            out = np.zeros(shape, dtype=first.dtype)
        else:
            out = np.full(shape, pad, dtype=first.dtype)
        offset = 0
        for part in parts:
            array = part[name]
            region = (slice(offset, offset + array.shape[0]), *map(slice, array.shape[1:]))
            out[region] = array
            offset += array.shape[0]
        batch[name] = out
    return batch
