"""A runtime that is not part of Aegis: an affine map `y = x @ w + b` whose weights are the
arrays `w` and `b` of a NumPy `.npz` file. Tests add it with one runtime table row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.runtimes.base import ArtifactError, Runtime
from appliance.runtimes.signature import merge_signature
from appliance.tensors import Signature, TensorSpec


class NpzRuntime(Runtime):
    name = "npz"

    def load(self) -> None:
        self._w, self._b = _weights(self.artifact)
        self.signature = self.settle_signature(
            self.read_signature(self.artifact), self.artifact.name
        )

    def read_signature(self, path: Path) -> Signature:
        w, _ = _weights(path)
        return Signature(
            (TensorSpec("x", "FP32", (-1, w.shape[0])),),
            (TensorSpec("y", "FP32", (-1, w.shape[1])),),
        )

    def settle_signature(self, found: Signature, artifact: str) -> Signature:
        return merge_signature(found, self.config, artifact)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": (inputs["x"] @ self._w + self._b).astype(np.float32)}


def _weights(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as arrays:
            w, b = arrays["w"].astype(np.float32), arrays["b"].astype(np.float32)
    except (OSError, ValueError, KeyError) as error:
        raise ArtifactError(f"{path.name}: not an .npz of arrays w and b ({error})") from None
    if w.ndim != 2 or b.shape != (w.shape[1],):
        raise ArtifactError(f"{path.name}: w must be (in, out) and b (out,)")
    return w, b
