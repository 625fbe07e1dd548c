"""The access record of a gRPC infer call: the request metrics and its log line, as over HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from appliance.grpc.errors import HTTP_STATUS
from appliance.logs import RequestLog
from appliance.repository import ServedModel
from appliance.rest.access import AccessLogSampler

log = RequestLog("aegis.grpc.access")


@dataclass(slots=True)
class Outcome:
    """What the log line and the metrics say about one call."""

    model_name: str
    model: ServedModel | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    fields: dict[str, object] = field(default_factory=dict)


def record(
    outcome: Outcome, request_id: str, elapsed: float, sampler: AccessLogSampler, rpc: str
) -> None:
    """The call's metrics (`protocol="grpc"`, `code` the HTTP status its gRPC code stands for)
    and, unless sampled away, its access log line."""
    status = HTTP_STATUS.get(outcome.code, 500)
    model = outcome.model
    if model is not None:
        model.metrics.observe_request(status, elapsed, "grpc")
    if not sampler.wants(status):
        return
    log.info(
        {
            "request_id": request_id,
            "model": outcome.model_name,
            "version": model.version if model is not None else None,
            "status": status,
            "grpc_code": outcome.code.name,
            "protocol": "grpc",
            "rpc": rpc,
            "duration_ms": round(elapsed * 1000, 3),
            **outcome.fields,
            "event": "infer",
        }
    )
