"""Retries for bucket store calls: exponential backoff with full jitter, bounded in count and time.

The client libraries' own retries are turned off where we call them, so that one policy bounds the
whole operation (their defaults keep trying too long before falling back to a local copy). Each
store says which of its errors are transient.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from appliance.storage.errors import SourceUnavailable

log = structlog.get_logger("aegis.storage")

T = TypeVar("T")

# 408 and 429 mean "slow down", 5xx a server-side failure: both are worth another try.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


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


def with_retries(
    call: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
) -> T:
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


def call_store(
    call: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    refused: Callable[[BaseException], str | None],
) -> T:
    """`with_retries`, then the store is out of reach when the last error is transient, or when
    `refused` explains it (credentials or permissions refused: the last good copy may serve)."""
    try:
        return with_retries(call, what, policy, is_transient)
    except Exception as error:
        if is_transient(error):
            raise SourceUnavailable(f"{what}: {type(error).__name__}: {error}") from error
        why = refused(error)
        if why is not None:
            raise SourceUnavailable(f"{what}: {why}") from error
        raise
