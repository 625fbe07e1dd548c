"""How long a replica's batches take, per bucket: what routing predicts completion times with.

Each bucket keeps an exponentially weighted moving average of its measured compute time, seeded
by warmup (which runs every bucket) and moved by every batch served. A bucket not yet measured is
estimated from the nearest measured one, scaled by rows: batch time grows at most linearly with
rows, so the estimate errs on the slow side.
"""

from __future__ import annotations

from collections.abc import Mapping

# Weight of the newest batch: about the last ten batches of a bucket count.
_ALPHA = 0.2


class BatchTimes:
    """Moving averages of batch compute seconds, by bucket."""

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}

    def seed(self, measured: Mapping[int, float]) -> None:
        """Start from warmup's measurements (kept where serving has measured already)."""
        for bucket, seconds in measured.items():
            self._seconds.setdefault(bucket, seconds)

    def observe(self, bucket: int, seconds: float) -> float:
        """Fold one batch in; the bucket's new average."""
        before = self._seconds.get(bucket)
        average = seconds if before is None else before + _ALPHA * (seconds - before)
        self._seconds[bucket] = average
        return average

    def seconds(self, bucket: int) -> float | None:
        """The expected compute time of a batch padded to `bucket`; None before any measurement."""
        known = self._seconds.get(bucket)
        if known is not None:
            return known
        if not self._seconds:
            return None
        nearest = min(self._seconds, key=lambda measured: abs(measured - bucket))
        return self._seconds[nearest] * max(bucket / nearest, 1.0)

    def snapshot(self) -> dict[int, float]:
        return dict(self._seconds)
