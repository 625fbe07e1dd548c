"""The transport-neutral data plane: V2 inference, metadata and readiness for every front door."""

from appliance.dataplane.plane import EXTENSIONS, DataPlane, Readiness
from appliance.dataplane.types import InferRequest, InferResponse, OutputTensor, RequestedOutput

__all__ = [
    "EXTENSIONS",
    "DataPlane",
    "InferRequest",
    "InferResponse",
    "OutputTensor",
    "Readiness",
    "RequestedOutput",
]
