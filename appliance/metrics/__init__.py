"""Prometheus metrics of the contract, held in one `Metrics` object per app (no global registry).

Histograms, not summaries, so that latency aggregates across replicas of a fleet.

Several serving processes (replicas) on one host use prometheus-client's multiprocess mode: their
values live in files under PROMETHEUS_MULTIPROC_DIR, set for each replica by the supervisor before
prometheus-client is imported, and `exposition` renders every replica's (see `replicas.py`).
Gauges are `livesum` there, so a dead process's gauges are dropped, not summed.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.runtimes.base import RuntimeStats

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMPILE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# The `protocol` label of the request series.
PROTOCOLS = ("http", "grpc")
SYNC_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    """Every metric Aegis exports; `render()` gives the Prometheus text format."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        exposition: CollectorRegistry | None = None,
    ) -> None:
        """`exposition`: what `render()` shows, when not this process's own `registry`."""
        self.registry = registry or CollectorRegistry()
        self.exposition = exposition or self.registry
        self.runtime_collectors: list[Collector] = []
        r = self.registry
        model = ("model", "version")
        # `protocol` ("http", "grpc") on the request series only: a query that leaves it out
        # sums over both, as it did before gRPC was served.
        self.requests = Counter(
            "aegis_inference_requests",
            "Inference requests by final status (over gRPC: the HTTP status its code stands for).",
            (*model, "code", "protocol"),
            registry=r,
        )
        self.request_duration = Histogram(
            "aegis_inference_request_duration_seconds",
            "Time from a request's arrival to its response, queue wait included.",
            (*model, "protocol"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "aegis_queue_duration_seconds",
            "Time a request waited before its batch started.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "aegis_compute_duration_seconds",
            "Time the runtime took for one batch.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "aegis_batch_size",
            "Rows of real requests in each batch run (before padding).",
            model,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.padded_rows = Counter(
            "aegis_batch_padding_rows",
            "Rows added to reach a batch bucket.",
            model,
            registry=r,
        )
        self.queue_depth = Gauge(
            "aegis_queue_depth",
            "Requests waiting for a batch.",
            model,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_ready = Gauge(
            "aegis_model_ready",
            "1 when the model version is loaded and warm.",
            (*model, "device"),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cpu_fallback_requests = Counter(
            "aegis_cpu_fallback_requests",
            "Requests served on the CPU instead of the model's device, by reason: unavailable "
            "(the device could not be opened), overflow (its queue was full), latency (the CPU "
            "was predicted to answer first).",
            (*model, "reason"),
            registry=r,
        )
        self.batch_seconds_average = Gauge(
            "aegis_batch_seconds_average",
            "Moving average of a batch's compute time, by device and bucket: what latency "
            "routing predicts completion times with (the slowest replica's, across replicas).",
            (*model, "device", "bucket"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.failed_batches = Counter(
            "aegis_failed_batches",
            "Batches the model raised on (before they were taken apart).",
            model,
            registry=r,
        )
        self.failed_batch_requests = Counter(
            "aegis_failed_batch_requests",
            "Requests of failed batches, by outcome: culprit (fails alone), rescued (answered "
            "by a rerun).",
            (*model, "outcome"),
            registry=r,
        )
        self.artifact_sync_bytes = Counter(
            "aegis_artifact_sync_bytes",
            "Bytes downloaded while syncing model artifacts.",
            model,
            registry=r,
        )
        self.artifact_sync_seconds = Histogram(
            "aegis_artifact_sync_seconds",
            "Time to sync one model version's artifacts.",
            model,
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.artifact_stale = Gauge(
            "aegis_artifact_stale",
            "1 when a model is served from its last good local copy because the source failed.",
            model,
            registry=r,
            multiprocess_mode="livesum",
        )

    def watch_runtimes(self, source: Callable[[], Iterable[RuntimeSample]]) -> None:
        """Export the runtimes' own counters (XLA compiles, CPU-fallback ops) at scrape time."""
        collector = _RuntimeStatsCollector(source)
        self.registry.register(collector)
        self.runtime_collectors.append(collector)

    def render(self) -> bytes:
        return generate_latest(self.exposition)


@dataclass(frozen=True, slots=True)
class RuntimeSample:
    name: str
    version: str
    device: str
    stats: RuntimeStats


class _RuntimeStatsCollector(Collector):
    """Reads RuntimeStats when scraped: compile figures live in the runtime, not on the hot path."""

    def __init__(self, source: Callable[[], Iterable[RuntimeSample]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "device"]
        compiles = CounterMetricFamily(
            "aegis_xla_compilations",
            "XLA graph compilations, by phase: warmup, or serving (a shape warmup missed).",
            labels=[*labels, "phase"],
        )
        cached = CounterMetricFamily(
            "aegis_xla_cached_compilations",
            "Compilations answered from the XLA cache.",
            labels=labels,
        )
        execute = CounterMetricFamily(
            "aegis_xla_execute_seconds",
            "Time spent executing compiled XLA graphs.",
            labels=labels,
        )
        fallback = CounterMetricFamily(
            "aegis_xla_cpu_fallback_ops",
            "Operations that XLA could not lower and ran on the CPU (aten::* counters).",
            labels=[*labels, "op"],
        )
        seconds = HistogramMetricFamily(
            "aegis_xla_compile_seconds", "XLA compile time, per compilation.", labels=labels
        )
        for sample in self._source():
            key = [sample.name, sample.version, sample.device]
            stats = sample.stats
            serving = stats.compilations_after_warmup
            compiles.add_metric([*key, "warmup"], stats.compilations - serving)
            compiles.add_metric([*key, "serving"], serving)
            cached.add_metric(key, stats.cached_compilations)
            execute.add_metric(key, stats.execute_seconds)
            for op, count in sorted(stats.fallback_ops.items()):
                fallback.add_metric([*key, op], count)
            buckets = [
                (str(bound), sum(1 for value in stats.compile_seconds if value <= bound))
                for bound in COMPILE_BUCKETS
            ]
            buckets.append(("+Inf", len(stats.compile_seconds)))
            seconds.add_metric(key, buckets, sum_value=sum(stats.compile_seconds))
        yield from (compiles, cached, execute, fallback, seconds)


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(amount)` for each of `amounts` (`histogram`: a labelled child), in one
    write per bucket they fall in.

    An engine observes every request's queue time, and in multiprocess mode each observe is two
    locked writes to a memory-mapped file (the sum and a bucket); for a batch of 32 requests that
    was about a tenth of the engine's event loop (bench/RESULTS.md). This reaches into
    prometheus-client's Histogram (`_upper_bounds`, `_buckets`, `_sum`; the version is pinned in
    constraints.txt), and a test holds what it writes equal to `observe`'s.
    """
    if not amounts:
        return
    bounds: list[float] = histogram._upper_bounds
    # The first bound at or above the amount: observe's `amount <= bound`.
    counts = collections.Counter(bisect.bisect_left(bounds, amount) for amount in amounts)
    histogram._sum.inc(sum(amounts))
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


class ModelMetrics:
    """One model version's metric children, bound once so the hot path skips label lookups."""

    def __init__(self, metrics: Metrics, name: str, version: str, batches: bool = True) -> None:
        """`batches=False`: a front end's, which answers requests and batches none (the
        engines count those), so it shows no batch series of its own."""
        self._metrics = metrics
        self.name = name
        self.version = version
        labels = (name, version)
        self._request_duration = {
            protocol: metrics.request_duration.labels(*labels, protocol) for protocol in PROTOCOLS
        }
        self._requests: dict[tuple[int, str], Counter] = {}
        # Answered requests not yet written to the metrics: (code, protocol, seconds).
        self._answered: list[tuple[int, str, float]] = []
        self._write_scheduled = False
        if not batches:
            return
        self.queue_duration = metrics.queue_duration.labels(*labels)
        self.compute_duration = metrics.compute_duration.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.padded_rows = metrics.padded_rows.labels(*labels)
        self.queue_depth = metrics.queue_depth.labels(*labels)
        self._fallbacks = {
            reason: metrics.cpu_fallback_requests.labels(*labels, reason)
            for reason in ("unavailable", "overflow", "latency")
        }
        self.failed_batches = metrics.failed_batches.labels(*labels)
        self._failed_requests = {
            outcome: metrics.failed_batch_requests.labels(*labels, outcome)
            for outcome in ("culprit", "rescued")
        }

    def observe_request(self, code: int, elapsed_s: float, protocol: str) -> None:
        """One answered request: its final status and its time, on `protocol` (PROTOCOLS).

        On an event loop the requests answered in one turn of it are written at the start of the
        next, together (a counter's and a histogram's locked writes per request were a twentieth
        of Aegis's own share of a small request); before any request that turn reads, such as a
        scrape of /metrics, is handled.
        """
        self._answered.append((code, protocol, elapsed_s))
        if self._write_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_answered()
            return
        self._write_scheduled = True
        loop.call_soon(self._write_answered)

    def _write_answered(self) -> None:
        self._write_scheduled = False
        answered, self._answered = self._answered, []
        counts = collections.Counter((code, protocol) for code, protocol, _ in answered)
        for (code, protocol), count in counts.items():
            child = self._requests.get((code, protocol))
            if child is None:
                child = self._metrics.requests.labels(self.name, self.version, str(code), protocol)
                self._requests[code, protocol] = child
            child.inc(count)
        for protocol, histogram in self._request_duration.items():
            observe_all(histogram, [seconds for _, kind, seconds in answered if kind == protocol])

    def observe_queue_times(self, seconds: list[float]) -> None:
        """How long each request of a batch waited for it."""
        observe_all(self.queue_duration, seconds)

    def observe_batch(self, rows: int, bucket: int, compute_s: float) -> None:
        self.batch_size.observe(rows)
        self.compute_duration.observe(compute_s)
        if bucket > rows:
            self.padded_rows.inc(bucket - rows)

    def count_fallback(self, reason: str) -> None:
        self._fallbacks[reason].inc()

    def batch_average(self, device: str) -> Callable[[int, float], None]:
        """What a replica on `device` reports its per-bucket batch-time averages to."""
        gauge = self._metrics.batch_seconds_average
        children: dict[int, Gauge] = {}

        def report(bucket: int, seconds: float) -> None:
            child = children.get(bucket)
            if child is None:
                child = gauge.labels(self.name, self.version, device, str(bucket))
                children[bucket] = child
            child.set(seconds)

        return report

    def observe_failure(self, culprits: int, rescued: int) -> None:
        self.failed_batches.inc()
        for outcome, count in (("culprit", culprits), ("rescued", rescued)):
            if count:
                self._failed_requests[outcome].inc(count)

    def set_ready(self, device: str, ready: bool) -> None:
        self._metrics.model_ready.labels(self.name, self.version, device).set(1 if ready else 0)

    def remove(self, device: str) -> None:
        """Forget this version's ready gauge once it is unloaded."""
        self.set_ready(device, False)
        self.queue_depth.set(0)
