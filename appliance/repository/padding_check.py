"""Warmup's check that padding a named dimension leaves a model's answers as they were.

The batcher pads each named dimension (say "seq") up to its bucket, and cuts the outputs that
follow it back to the request's length. That is only right for a model that ignores the padded
positions: one that averages over "seq" without a mask, or lets padding reach the real positions
through attention, answers differently for the same request depending on which bucket it landed
in, and nothing in the reply says so. So once its shapes are warm, a model runs one request of
ones at the smallest bucket of a named dimension and again padded to the next bucket (two shapes
warmup has compiled), and does not come up if its outputs differ beyond float noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import structlog

from appliance.batching.padding import NamedDims, Tensors, assemble
from appliance.runtimes import Runtime
from appliance.runtimes.base import ArtifactError
from appliance.tensors import bf16_to_float32

log = structlog.get_logger("aegis.repository")

# Padding a masked model changes how long its reductions run, so float sums may round
# differently (about 1e-6 relative here); an unmasked one is off by the share of padding.
RELATIVE_TOLERANCE = 1e-3
BF16_ONE = 0x3F80  # 1.0 as bfloat16 bits (BF16 travels as its raw 16-bit pattern)


def check_padding(
    runtime: Runtime, batch_bucket: int, buckets: Mapping[str, tuple[int, ...]]
) -> None:
    """ArtifactError naming the dimension and output when padding changes the answer."""
    signature = runtime.signature
    assert signature is not None, "load() first"
    if any(spec.datatype == "BYTES" for spec in signature.inputs):
        return  # no value of ones to send; strings pad with "" and are the model's to read
    dims = NamedDims.of(signature, buckets)
    smallest = {dim: sizes[0] for dim, sizes in buckets.items()}
    request = runtime.zeros(1, smallest)
    for spec in signature.inputs:
        request[spec.name][...] = BF16_ONE if spec.datatype == "BF16" else 1
    bf16_outputs = {spec.name for spec in signature.outputs if spec.datatype == "BF16"}
    exact = _first_row(runtime, request, batch_bucket, dims, smallest)
    for dim, sizes in buckets.items():
        if len(sizes) < 2:
            continue  # one bucket: every request of this length is padded alike
        padded = _first_row(runtime, request, batch_bucket, dims, {**smallest, dim: sizes[1]})
        for name, want in exact.items():
            got = padded[name]
            if name in bf16_outputs:
                got, want = bf16_to_float32(got), bf16_to_float32(want)
            if _close(got, want):
                continue
            difference = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
            if runtime.config.padding_check == "warn":
                log.warning(
                    "padding_changes_outputs",
                    artifact=runtime.artifact.name,
                    output=name,
                    dim=dim,
                    buckets=[sizes[0], sizes[1]],
                    difference=difference,
                )
                continue
            raise ArtifactError(
                f"{runtime.artifact.name}: output {name!r} changes when {dim!r} is padded from "
                f"{sizes[0]} to {sizes[1]} (by up to {difference:.3g}): the model reads the "
                "padded positions, so its answer would depend on the bucket a request lands in. "
                f'Give it an input that masks padding (shape [-1, "{dim}"], padded with 0 as '
                "pad_value does by default), or set the inputs' pad_value to what the model "
                'ignores; padding_check = "warn" serves it as it is'
            )


def _first_row(
    runtime: Runtime,
    request: Tensors,
    batch_bucket: int,
    dims: NamedDims,
    padded: Mapping[str, int],
) -> Tensors:
    """The request's outputs, its named dimensions padded to `padded`, cut back to its own."""
    batch = assemble([request], batch_bucket, dims, padded)
    return dims.slice_outputs(runtime.run(batch), 0, 1, dims.lengths(request))


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    if want.dtype.kind not in "fc":
        return bool(np.array_equal(got, want))
    wide = want.astype(np.float64)
    scale = float(np.abs(wide[np.isfinite(wide)]).max(initial=1.0))
    return bool(
        np.allclose(
            got.astype(np.float64),
            wide,
            rtol=RELATIVE_TOLERANCE,
            atol=RELATIVE_TOLERANCE * scale,
            equal_nan=True,
        )
    )
