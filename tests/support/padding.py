"""Requests padded to a batch bucket, as the batcher pads them, for tests that run a runtime
directly."""

from __future__ import annotations

import numpy as np


def pad(rows: np.ndarray, bucket: int) -> np.ndarray:
    """`rows` padded with zero rows up to `bucket` rows, as the batcher does."""
    padding = np.zeros((bucket - rows.shape[0], *rows.shape[1:]), dtype=rows.dtype)
    return np.concatenate([rows, padding])
