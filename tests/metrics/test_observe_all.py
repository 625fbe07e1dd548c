"""`observe_all` writes what one `observe` per amount writes, in fewer writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from appliance.metrics import LATENCY_BUCKETS, observe_all

# On bounds, between them, below the first, past the last (+Inf), and repeated.
AMOUNTS = [0.0, 0.0005, 0.0004, 0.001, 0.003, 0.003, 0.07, 1.0, 9.99, 10.0, 42.0, 0.0005]


def waits() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    family = Histogram("waits", "", ("model",), buckets=LATENCY_BUCKETS, registry=registry)
    return registry, family.labels("m")


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every sample but the creation time, by name and bucket bound."""
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_observing_all_at_once_writes_what_observing_each_writes() -> None:
    one_by_one, each = waits()
    all_at_once, together = waits()
    for amount in AMOUNTS:
        each.observe(amount)
    observe_all(together, AMOUNTS)
    assert samples(all_at_once) == samples(one_by_one)
    assert samples(all_at_once)["waits_count", ""] == len(AMOUNTS)


def test_observing_no_amounts_writes_nothing() -> None:
    untouched, _ = waits()
    registry, child = waits()
    observe_all(child, [])
    assert samples(registry) == samples(untouched)
