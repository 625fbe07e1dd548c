"""Triton's model statistics, from the request and batch metrics of the whole host.

What the metrics hold: answered requests by status (success = 200, fail = the rest) with their
total time, queue wait, compute time and rows of each batch. They are read from what `/metrics`
shows, so with replicas or front ends the answer sums every process (a front end keeps no batch
series: its engines do).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from appliance.grpc.proto import inference_pb2 as pb
from appliance.metrics import Metrics
from appliance.repository import ServedModel

_NS = 1_000_000_000


def _samples(metrics: Metrics, name: str, version: str) -> dict[str, float]:
    """Sample name (with the `code` of request counters) -> value, summed over protocols."""
    totals: dict[str, float] = defaultdict(float)
    for family in metrics.exposition.collect():
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != name or labels.get("version") != version:
                continue
            key = sample.name
            if "code" in labels:
                key += "_ok" if labels["code"] == "200" else "_failed"
            if "le" in labels:
                continue
            totals[key] += sample.value
    return totals


def _duration(count: float, seconds: float) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=int(count), ns=int(seconds * _NS))


def model_statistics(metrics: Metrics, model: ServedModel) -> pb.ModelStatistics:
    values = _samples(metrics, model.name, model.version)
    requests = "aegis_inference_requests_total"
    duration = "aegis_inference_request_duration_seconds"
    ok = values[f"{requests}_ok"]
    failed = values[f"{requests}_failed"]
    answered = ok + failed
    # The duration histogram is not split by status: each side gets its share of the total.
    total_s = values[f"{duration}_sum"]
    ok_s = total_s * ok / answered if answered else 0.0
    inference = pb.InferStatistics(
        success=_duration(ok, ok_s),
        fail=_duration(failed, total_s - ok_s),
        queue=_duration(
            values["aegis_queue_duration_seconds_count"],
            values["aegis_queue_duration_seconds_sum"],
        ),
        compute_infer=_duration(
            values["aegis_compute_duration_seconds_count"],
            values["aegis_compute_duration_seconds_sum"],
        ),
    )
    return pb.ModelStatistics(
        name=model.name,
        version=model.version,
        inference_count=int(values["aegis_batch_size_sum"]),
        execution_count=int(values["aegis_batch_size_count"]),
        inference_stats=inference,
    )


def statistics(metrics: Metrics, models: Iterable[ServedModel]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(
        model_stats=[model_statistics(metrics, model) for model in models]
    )
