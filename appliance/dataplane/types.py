"""The request and response of one inference call, as every transport hands them over.

A transport decodes its wire format into an `InferRequest` (inputs already numpy arrays) and
encodes the `InferResponse` it gets back; nothing here knows of HTTP, gRPC or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool  # a transport hint (HTTP's binary extension); other transports ignore it
    # The output's parameters, the transport's own keys removed (binary_data): each is
    # implemented by the data plane or refused.
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str | None  # None: the model's default (highest) version
    inputs: dict[str, np.ndarray]  # in request order
    datatypes: dict[str, str]  # the V2 datatype of each input, as the client declared it
    id: str | None = None
    # Request-level parameters, the transport's own keys removed (binary_data_output, timeout).
    parameters: dict[str, object] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    binary_output: bool = False  # the binary hint of outputs not listed
    timeout_us: int | None = None  # the client's own deadline, from the request's arrival
    # Per-input parameters, the transport's own keys removed (binary_data_size); inputs with
    # none are absent.
    input_parameters: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray
    binary: bool


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]
    batch_size: int  # the rows of the batch this request rode in
    queue_s: float
    compute_s: float
    fallback: str | None = None  # why a CPU replica answered instead of the model's device
    batch: int = 0  # the batch's number on its batcher, shared by the requests in it
