"""ONNX models through onnxruntime (the `onnx` extra); the signature comes from the model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from appliance.config import ModelConfig
from appliance.runtimes.base import ArtifactError, DeviceUnavailable, ModelExecutionError, Runtime
from appliance.runtimes.signature import merge_signature
from appliance.tensors import Signature, TensorSpec

_ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(node: onnxruntime.NodeArg) -> TensorSpec:
    try:
        datatype = _ONNX_TO_DATATYPE[node.type]
    except KeyError:
        raise ArtifactError(f"{node.name}: ONNX type {node.type} is not supported") from None
    # A `dim_param` is a symbol the graph shares between tensors (see `signature`); an unknown
    # dimension is None.
    shape = tuple(
        dim if (isinstance(dim, int) and dim > 0) or (isinstance(dim, str) and dim) else -1
        for dim in node.shape
    )
    return TensorSpec(node.name, datatype, shape)


def _session(path: Path, providers: list[str]) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    # Concurrency comes from max_concurrency batches in flight; one op thread each is stable.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:
        raise ArtifactError(f"{path.name}: not a loadable ONNX model ({error})") from None


def _found(session: onnxruntime.InferenceSession) -> Signature:
    return Signature(
        tuple(_spec(node) for node in session.get_inputs()),
        tuple(_spec(node) for node in session.get_outputs()),
    )


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(
        self,
        config: ModelConfig,
        artifact: Path,
        *,
        device: str | None = None,
        compilation_cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            config, artifact, device=device, compilation_cache_dir=compilation_cache_dir
        )
        self._session: onnxruntime.InferenceSession | None = None
        self._feed_names: dict[str, str] = {}
        self._fetch_names: list[str] = []

    def _providers(self) -> list[str]:
        if self.requested_device == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise DeviceUnavailable(
                    "device 'cuda': this onnxruntime build has no CUDA provider"
                )
            return ["CUDAExecutionProvider"]
        return ["CPUExecutionProvider"]

    def load(self) -> None:
        providers = self._providers()
        session = _session(self.artifact, providers)
        self.signature = self.settle_signature(_found(session), self.artifact.name)
        # Declared names may differ from the graph's: feed and fetch by position.
        self._feed_names = {
            spec.name: node.name
            for spec, node in zip(self.signature.inputs, session.get_inputs(), strict=True)
        }
        self._fetch_names = [node.name for node in session.get_outputs()]
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self._session = session

    def read_signature(self, path: Path) -> Signature:
        return _found(_session(path, ["CPUExecutionProvider"]))

    def settle_signature(self, found: Signature, artifact: str) -> Signature:
        return merge_signature(found, self.config, artifact)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None and self.signature is not None, "load() first"
        feed = {
            self._feed_names[name]: _as_text(name, array) if array.dtype == np.object_ else array
            for name, array in inputs.items()
        }
        try:
            values = self._session.run(self._fetch_names, feed)
        except Exception as error:
            raise ModelExecutionError(f"{type(error).__name__}: {error}") from error
        return {
            spec.name: _as_bytes(value) if spec.datatype == "BYTES" else value
            for spec, value in zip(self.signature.outputs, values, strict=True)
        }

    def close(self) -> None:
        self._session = None


# onnxruntime's Python binding takes and gives string tensors as `str`, UTF-8 inside: a `bytes`
# element would be fed as its printed form ("b'abc'"). BYTES tensors are bytes everywhere else.


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    text = np.empty(array.shape, dtype=np.object_)
    try:
        text.reshape(-1)[:] = [
            element.decode() if isinstance(element, bytes) else element
            for element in array.reshape(-1)
        ]
    except UnicodeDecodeError as error:
        raise ModelExecutionError(
            f"input {name!r}: ONNX string tensors hold UTF-8 text, an element is not ({error})"
        ) from None
    return text


def _as_bytes(array: np.ndarray) -> np.ndarray:
    raw = np.empty(array.shape, dtype=np.object_)
    raw.reshape(-1)[:] = [
        element.encode() if isinstance(element, str) else element for element in array.reshape(-1)
    ]
    return raw
