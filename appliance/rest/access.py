"""Request ids and the access record: the request metrics and one log line per infer call, the
line written for every error and for all, none or a share of the successes (`server.access_log`).

At thousands of requests a second the per-request line is a real share of the event loop; the
error lines are what an operator cannot do without, so they are never sampled away.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field

from starlette.types import Scope

from appliance.logs import RequestLog
from appliance.repository import ServedModel

log = RequestLog("aegis.rest.access")

# Request ids end up in logs and headers: keep them short and free of control characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A 32-hex-digit id, unique within this process and, by its random prefix, across restarts.

    A counter behind a per-process random prefix costs a fraction of `uuid4()` (which reads
    16 random bytes and builds a UUID object on every request).
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id_of(given: str | None) -> str:
    """The client's X-Request-Id when it is a safe one, else a new id."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


@dataclass(slots=True)
class Outcome:
    """What the access log line and the metrics say about one request."""

    model: ServedModel | None = None
    status: int = 200
    fields: dict[str, object] = field(default_factory=dict)
    refused: bool = False  # turned away because the model's queue was full
    hold_s: float = 0.0  # how long its keep-alive connection is held, when refused


class AccessLogSampler:
    """`rate` of the successful requests are logged (1.0: all; None: none), every error is.

    Deterministic: a credit of `rate` per success, a line whenever it reaches one, so the logged
    share is exact at any rate and costs one addition per request.
    """

    def __init__(self, rate: float | None = 1.0) -> None:
        self._rate = 0.0 if rate is None else rate
        self._credit = 0.0

    def wants(self, status: int) -> bool:
        if status >= 400 or self._rate >= 1.0:
            return True
        self._credit += self._rate
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False


def record(
    scope: Scope, outcome: Outcome, request_id: str, elapsed: float, sampler: AccessLogSampler
) -> None:
    """The request's metrics and, unless sampled away, its access log line."""
    params = scope["path_params"]
    model = outcome.model
    if model is not None:
        model.metrics.observe_request(outcome.status, elapsed, "http")
    if not sampler.wants(outcome.status):
        return
    log.info(
        {
            "request_id": request_id,
            "model": params["model_name"],
            "version": model.version if model is not None else params.get("model_version"),
            "status": outcome.status,
            "protocol": "http",
            "duration_ms": round(elapsed * 1000, 3),
            **outcome.fields,
            "event": "infer",
        }
    )
