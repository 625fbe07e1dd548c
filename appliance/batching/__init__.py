"""Dynamic batching with padding to fixed buckets, bounded queues and deadlines."""

from appliance.batching.batcher import (
    BatchingPolicy,
    BatchObserver,
    BatchResult,
    DynamicBatcher,
    Progress,
    Queued,
)
from appliance.batching.padding import NamedDims, assemble

__all__ = [
    "BatchObserver",
    "BatchResult",
    "BatchingPolicy",
    "DynamicBatcher",
    "NamedDims",
    "Progress",
    "Queued",
    "assemble",
]
