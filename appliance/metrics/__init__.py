"""Prometheus metrics of the contract, held in one `Metrics` object per app (no global registry).

Histograms, not summaries, so that latency aggregates across replicas of a fleet.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMPILE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
SYNC_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    """Every metric Aegis exports; `render()` gives the Prometheus text format."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        model = ("model", "version")
        self.requests = Counter(
            "aegis_inference_requests", "Inference requests by final HTTP status.",
            (*model, "code"), registry=r,
        )
        self.request_duration = Histogram(
            "aegis_inference_request_duration_seconds",
            "Time from a request's arrival to its response, queue wait included.",
            model, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            "aegis_queue_duration_seconds", "Time a request waited before its batch started.",
            model, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute_duration = Histogram(
            "aegis_compute_duration_seconds", "Time the runtime took for one batch.",
            model, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "aegis_batch_size", "Rows of real requests in each batch run (before padding).",
            model, buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.padded_rows = Counter(
            "aegis_batch_padding_rows", "Rows added to reach a batch bucket.", model, registry=r,
        )
        self.queue_depth = Gauge(
            "aegis_queue_depth", "Requests waiting for a batch.", model, registry=r,
        )
        self.model_ready = Gauge(
            "aegis_model_ready", "1 when the model version is loaded and warm.",
            (*model, "device"), registry=r,
        )
        self.xla_compile_seconds = Histogram(
            "aegis_xla_compile_seconds", "XLA compile time, per compilation.",
            model, buckets=COMPILE_BUCKETS, registry=r,
        )
        self.xla_compilations = Counter(
            "aegis_xla_compilations", "XLA compilations, by phase (warmup or serving).",
            (*model, "phase"), registry=r,
        )
        self.cpu_fallback_requests = Counter(
            "aegis_cpu_fallback_requests", "Requests served by a CPU fallback replica.",
            model, registry=r,
        )
        self.artifact_sync_bytes = Counter(
            "aegis_artifact_sync_bytes", "Bytes downloaded while syncing model artifacts.",
            model, registry=r,
        )
        self.artifact_sync_seconds = Histogram(
            "aegis_artifact_sync_seconds", "Time to sync one model version's artifacts.",
            model, buckets=SYNC_BUCKETS, registry=r,
        )
        self.artifact_stale = Gauge(
            "aegis_artifact_stale",
            "1 when a model is served from its last good local copy because the source failed.",
            model, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
