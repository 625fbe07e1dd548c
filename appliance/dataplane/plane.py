"""The data plane: every V2 operation between a transport's decode and its encode.

Each front door (HTTP today, gRPC and Vertex AI beside it) parses its wire format into the types
of `appliance.dataplane.types`, calls the plane, and renders what it returns; input checks,
request parameters, deadlines, batching and the building of outputs happen here once, so every
transport answers the same request the same way. Failures are the core errors of
`appliance.errors`; each transport maps them to its own status codes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np

from appliance.dataplane import metadata, parameters
from appliance.dataplane.classification import top_classes
from appliance.dataplane.types import InferRequest, InferResponse, OutputTensor
from appliance.errors import InvalidInput
from appliance.repository import ModelRepository, ServedModel
from appliance.tensors import TensorSpec, bf16_to_float32

# The protocol extensions the plane implements, whatever the transport; a transport adds its own
# (HTTP's binary tensor data).
EXTENSIONS = ("classification", "model_repository", "model_configuration")


class Readiness(Protocol):
    def is_ready(self) -> bool: ...

    def not_ready_reason(self) -> str: ...

    def is_draining(self) -> bool:
        """True from SIGTERM on: replies then ask clients to close their connections."""
        ...


class DataPlane:
    """The V2 operations on a repository of served models, for any transport."""

    def __init__(
        self,
        repository: ModelRepository,
        readiness: Readiness,
        server_name: str = "aegis",
        server_version: str = "0",
    ) -> None:
        self.repository = repository
        self.readiness = readiness
        self.server_name = server_name
        self.server_version = server_version

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.readiness.is_ready()

    def not_ready_reason(self) -> str:
        return self.readiness.not_ready_reason()

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": self.server_name,
            "version": self.server_version,
            "extensions": list(EXTENSIONS),
        }

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served version (the highest when `version` is None); ModelNotFound or
        ModelNotReady when there is none."""
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.model(name, version).ready

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.model(name, version)
        return metadata.model_metadata(model, self.repository.versions(name))

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return metadata.triton_config(self.model(name, version))

    def repository_index(self) -> list[dict[str, str]]:
        return self.repository.index()

    def check_room(self, name: str, version: str | None = None) -> ServedModel:
        """The model, or QueueFull when none of its replicas could queue a request.

        For the door, before the body is decoded: under overload the refusal is the common
        answer and must not cost a decode. A transport that needs the model for its metrics even
        when refused calls `model()` and then `ServedModel.check_room()` itself.
        """
        model = self.model(name, version)
        model.check_room()
        return model

    async def infer(self, request: InferRequest, model: ServedModel | None = None) -> InferResponse:
        """Check `request` against the model, queue it, and return its outputs.

        `model` is the one the transport looked up at its door (`model()`, `check_room()`), if
        it did: the request then goes to that version even if another replaced it meanwhile,
        as it would had it arrived a moment earlier.

        Raises InvalidInput (naming the input, output or parameter at fault), ModelNotFound,
        ModelNotReady, QueueFull, DeadlineExceeded or ModelFailed. A transport whose client
        leaves cancels the task awaiting this call: the request then leaves the queue.
        """
        if model is None:
            model = self.repository.get(request.model_name, request.model_version)
        rows = model.check_inputs(request.inputs, request.datatypes)
        if request.parameters:
            parameters.check_request(request.parameters)
        for name, given in request.input_parameters.items():
            parameters.check_input(name, given)
        wanted = _wanted(model, request)
        timeout_s = model.config.timeout_ms / 1000.0
        if request.timeout_us is not None:
            timeout_s = min(timeout_s, request.timeout_us / 1_000_000)
        deadline = asyncio.get_running_loop().time() + timeout_s
        result = await model.infer(request.inputs, rows, deadline)
        outputs = [
            OutputTensor(spec.name, spec.datatype, result.outputs[spec.name], binary)
            if count is None
            else OutputTensor(
                spec.name,
                "BYTES",
                top_classes(
                    spec.name, _scores(spec, result.outputs[spec.name]), count, model.labels
                ),
                binary,
            )
            for spec, binary, count in wanted
        ]
        return InferResponse(
            model.name,
            model.version,
            request.id,
            outputs,
            result.batch_size,
            result.queue_s,
            result.compute_s,
            result.fallback,
            result.batch,
        )


def _scores(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """An output's values to rank: a BF16 output's bit patterns would rank negatives highest."""
    return bf16_to_float32(array) if spec.datatype == "BF16" else array


def _wanted(model: ServedModel, request: InferRequest) -> list[tuple[TensorSpec, bool, int | None]]:
    """The outputs to return, in order, with their binary hints and classification counts."""
    if request.outputs is None:
        return [(spec, request.binary_output, None) for spec in model.signature.outputs]
    wanted = []
    asked: set[str] = set()
    for out in request.outputs:
        if out.name in asked:
            # As an input given twice is: which of the two hints or counts would hold?
            raise InvalidInput(f"output {out.name!r} is requested twice")
        asked.add(out.name)
        spec = model.output_spec(out.name)
        count = parameters.classification_count(spec, out.parameters) if out.parameters else None
        wanted.append((spec, out.binary, count))
    return wanted
