"""Retries for Cloud Storage calls: exponential backoff with full jitter, bounded in count and time.

The client library's own retries are turned off where we call it, so that one policy bounds the
whole operation (its default keeps trying for 120 s, too long before falling back to a local copy).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
import structlog
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

log = structlog.get_logger("aegis.storage")

T = TypeVar("T")

# 408 and 429 mean "slow down", 5xx a server-side failure: both are worth another try.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 16.0
    deadline_s: float = 120.0  # one operation, its retries and waits included

    def backoff(self, attempt: int) -> float:
        """Full jitter: spreads the retries of many hosts hitting one bucket."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in TRANSIENT_STATUS
    return isinstance(error, _TRANSIENT_ERRORS)


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run `call`; retry transient errors while attempts and the deadline allow, else re-raise."""
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt >= policy.attempts:
                raise
            delay = policy.backoff(attempt)
            if time.monotonic() - started + delay > policy.deadline_s:
                raise
            log.warning(
                "storage_retry",
                what=what,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=str(error),
            )
            time.sleep(delay)
            attempt += 1
