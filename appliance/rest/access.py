"""Request ids and the access record: one log line and the request metrics per infer call."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field

import structlog
from starlette.types import Scope

from appliance.repository import ServedModel

log = structlog.get_logger("aegis.rest.access")

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


def record(scope: Scope, outcome: Outcome, request_id: str, elapsed: float) -> None:
    """The request's metrics and its access log line."""
    params = scope["path_params"]
    model = outcome.model
    if model is not None:
        model.metrics.count_request(outcome.status)
        model.metrics.request_duration.observe(elapsed)
    log.info(
        "infer",
        request_id=request_id,
        model=params["model_name"],
        version=model.version if model is not None else params.get("model_version"),
        status=outcome.status,
        duration_ms=round(elapsed * 1000, 3),
        **outcome.fields,
    )
