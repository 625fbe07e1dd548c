"""The XLA device the tier runs on, XLA:CPU (`make test-xla`) or a real TPU (`make test-tpu`), and
the programs torch_xla compiled for it in this process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.zoo import Tolerance

PJRT_DEVICE = os.environ.get("PJRT_DEVICE", "CPU").upper()
ON_TPU = PJRT_DEVICE == "TPU"
DEVICE_LABEL = "xla:tpu:0" if ON_TPU else "xla:cpu:0"
# A TPU runs float32 matmuls as bfloat16 passes by default: outputs match CPU torch less closely.
TOLERANCE: Tolerance = {"rtol": 2e-2, "atol": 2e-2} if ON_TPU else {"rtol": 1e-5, "atol": 1e-5}
without_tpu = pytest.mark.skipif(ON_TPU, reason="needs a host without a TPU")


def uncached_compiles() -> int:
    """Programs torch_xla compiled in this process, not read from its persistent cache."""
    import torch_xla.debug.metrics as metrics

    return metrics.counter_value("UncachedCompile") or 0
