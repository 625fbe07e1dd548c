"""Protocol tensors as torch tensors and back, for the runtimes that run torch models (torch, tpu).

BF16 travels as its raw 16 bits (numpy has no bfloat16): `to_tensor` reads them as bfloat16, and
`to_numpy` gives them back as uint16.
"""

from __future__ import annotations

import numpy as np
import torch

TORCH_TO_DATATYPE: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.bfloat16: "BF16",
}


def to_tensor(array: np.ndarray, datatype: str) -> torch.Tensor:
    """A torch view of `array` (no copy where numpy and torch share the layout)."""
    if datatype == "BF16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()
