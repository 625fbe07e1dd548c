"""Open Inference Protocol datatypes and their numpy equivalents.

Tensors cross every boundary inside Aegis as numpy arrays: the HTTP layer decodes into them and the
runtimes convert them to whatever their framework wants. Nothing here knows about torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.errors import InvalidInput

# BF16 has no numpy dtype: it travels as its raw 16-bit pattern; only the runtime reinterprets it.
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_DATATYPE: dict[np.dtype, str] = {
    dtype: name for name, dtype in DATATYPE_TO_NUMPY.items() if name not in ("BF16",)
}

DATATYPES: frozenset[str] = frozenset(DATATYPE_TO_NUMPY)


# A dimension of a tensor: an int >= 1 is fixed, -1 is dynamic and unnamed, a str names a dynamic
# dimension of `[models.dims]`, whose sizes the batcher pads up to that dimension's buckets.
Dim = int | str
PadValue = bool | int | float


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output of a model, and what padding of it holds."""

    name: str
    datatype: str
    shape: tuple[Dim, ...]
    pad_value: PadValue = 0

    def to_json(self) -> dict[str, object]:
        # The protocol knows fixed sizes and -1 ("any size"): a named dimension is the latter.
        shape = [dim if isinstance(dim, int) else -1 for dim in self.shape]
        return {"name": self.name, "datatype": self.datatype, "shape": shape}

    def named_axes(self) -> tuple[tuple[int, str], ...]:
        """(axis, dimension name) of each named dimension, in axis order."""
        return tuple((axis, dim) for axis, dim in enumerate(self.shape) if isinstance(dim, str))


@dataclass(frozen=True, slots=True)
class DimLimit:
    """The sizes an artifact accepts on one dynamic axis of one input (torch.export `Dim`).

    Axes that share a `symbol` must have the same size in one call (the export tied them)."""

    input: str
    axis: int
    symbol: str
    min: int
    max: int | None  # None: no upper bound

    def to_json(self) -> dict[str, object]:
        return {"input": self.input, "axis": self.axis, "min": self.min, "max": self.max}


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    limits: tuple[DimLimit, ...] = ()


def numpy_dtype(datatype: str) -> np.dtype:
    return DATATYPE_TO_NUMPY[datatype]


def datatype_of(array: np.ndarray) -> str:
    try:
        return NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise ValueError(
            f"numpy dtype {array.dtype} has no Open Inference Protocol datatype"
        ) from None


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """BF16 values (held as their 16-bit patterns) as the float32 values they are."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values as BF16 bit patterns, rounded to nearest even: a finite value past
    bfloat16's largest rounds to infinity (`cast_in_range` refuses it instead)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def cast_in_range(values: np.ndarray, datatype: str) -> np.ndarray | None:
    """`values` as `datatype`'s array (BF16 as its bit patterns), or None when one of them does
    not fit it: an integer past the type's range (numpy would wrap it), or a finite number past
    the largest of a float type (numpy would make it infinite, and the model would compute with
    a value nobody sent)."""
    target = np.dtype(np.float32) if datatype == "BF16" else DATATYPE_TO_NUMPY[datatype]
    try:
        with np.errstate(over="raise"):
            converted = values.astype(target, copy=False)
    except FloatingPointError:
        return None
    if target.kind in "iu" and values.size and not np.array_equal(converted, values):
        return None
    if datatype != "BF16":
        return converted
    bits = float32_to_bf16(converted)
    # An all-ones exponent where the value was finite: it rounded past bfloat16's largest.
    if (((bits & 0x7F80) == 0x7F80) & np.isfinite(converted)).any():
        return None
    return bits


def check_bool_bytes(array: np.ndarray, where: str) -> None:
    """InvalidInput naming `where` and the byte when a BOOL array read from raw bytes holds a
    byte other than 0 or 1.

    numpy and torch read any nonzero byte as true, but runtimes that work on the byte do not:
    onnxruntime's Not of byte 2 is 3 (true again) and its Cast to INT32 is 2.
    """
    if array.size == 0:
        return
    raw = array.reshape(-1).view(np.uint8)
    if int(raw.max()) > 1:
        raise InvalidInput(f"{where}: BOOL elements are bytes 0 or 1, found {raw[raw > 1][0]}")


def shape_matches(spec_shape: tuple[Dim, ...], shape: tuple[int, ...]) -> bool:
    """True when `shape` fits `spec_shape`, where -1 or a dimension name accepts any size."""
    if len(spec_shape) != len(shape):
        return False
    # A loop, not all() over a generator: this runs for every input of every request.
    for want, got in zip(spec_shape, shape):  # noqa: B905 (the lengths are equal, checked above)
        if want != got and want != -1 and not isinstance(want, str):
            return False
    return True
