"""Open Inference Protocol datatypes and their numpy equivalents.

Tensors cross every boundary inside Aegis as numpy arrays: the HTTP layer decodes into them and the
runtimes convert them to whatever their framework wants. Nothing here knows about torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output of a model; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def numpy_dtype(datatype: str) -> np.dtype:
    return DATATYPE_TO_NUMPY[datatype]


def datatype_of(array: np.ndarray) -> str:
    try:
        return NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise ValueError(
            f"numpy dtype {array.dtype} has no Open Inference Protocol datatype"
        ) from None


def shape_matches(spec_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """True when `shape` fits `spec_shape`, where -1 in the spec accepts any size."""
    if len(spec_shape) != len(shape):
        return False
    return all(want in (-1, got) for want, got in zip(spec_shape, shape, strict=True))
