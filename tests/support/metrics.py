"""A server's /metrics page, as text or as a lookup, for tests that check counters and gauges."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import Address, get_text


def metrics_page(server: Address) -> str:
    """The /metrics page now, as the server writes it."""
    return get_text(server, "/metrics", timeout_s=10)


def scrape(server: Address) -> Callable[..., float]:
    """The /metrics page now, as a lookup: value(metric sample name, **labels)."""
    text = get_text(server, "/metrics")
    samples = [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
    ]

    def value(name: str, **labels: str) -> float:
        found = [
            sample.value
            for sample in samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    return value
