"""The supervisor's metrics: whether each child serves, fails to start, and how often it was
started again (written as text beside the children's files, `SUPERVISOR_FILE`)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.lifecycle.child import FAILING_AFTER, Child


class ChildrenCollector(Collector):
    """The supervisor's own series: each child up, failing, restarted."""

    def __init__(self, replicas: list[Child]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "aegis_replica_up", "1 while the replica is warm and serving.", labels=["replica"]
        )
        failing = GaugeMetricFamily(
            "aegis_replica_failing",
            f"1 when the replica failed {FAILING_AFTER} starts in a row.",
            labels=["replica"],
        )
        restarts = CounterMetricFamily(
            "aegis_replica_restarts", "Times the replica was started again.", labels=["replica"]
        )
        frontend_up = GaugeMetricFamily(
            "aegis_frontend_up", "1 while the front end serves.", labels=["frontend"]
        )
        frontend_restarts = CounterMetricFamily(
            "aegis_frontend_restarts", "Times the front end was started again.", labels=["frontend"]
        )
        for replica in self._replicas:
            label = [str(replica.index)]
            if not replica.runs_models:
                frontend_up.add_metric(label, 1 if replica.alive and replica.warm else 0)
                frontend_restarts.add_metric(label, replica.restarts)
                continue
            up.add_metric(label, 1 if replica.alive and replica.warm else 0)
            failing.add_metric(label, 1 if replica.failing else 0)
            restarts.add_metric(label, replica.restarts)
        yield from (up, failing, restarts)
        if any(not replica.runs_models for replica in self._replicas):
            yield from (frontend_up, frontend_restarts)
