"""The requests a serving loop answers in one turn reach the metrics at the start of the next,
as many and as long as observed one by one; off a loop, at once."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from appliance.metrics import Metrics, ModelMetrics

# Status, protocol and seconds of each answered request: repeated codes, both protocols, times
# on a bucket bound, between bounds and past the last one.
ANSWERED = [
    (200, "http", 0.001),
    (200, "http", 0.0042),
    (503, "http", 0.0005),
    (200, "grpc", 0.07),
    (200, "http", 42.0),
    (400, "grpc", 0.003),
]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The request series' samples but the creation times, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("aegis_inference_request")
        and not sample.name.endswith("_created")
    }


def observed_one_by_one() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = Metrics()
    for code, protocol, seconds in ANSWERED:
        metrics.requests.labels("m", "1", str(code), protocol).inc()
        metrics.request_duration.labels("m", "1", protocol).observe(seconds)
    return samples(metrics.registry)


def test_a_turns_answers_are_written_at_the_next_turn_as_observed_one_by_one() -> None:
    metrics = Metrics()
    model = ModelMetrics(metrics, "m", "1")
    before = samples(metrics.registry)

    async def answer_in_one_turn() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        for code, protocol, seconds in ANSWERED:
            model.observe_request(code, seconds, protocol)
        within_the_turn = samples(metrics.registry)
        await asyncio.sleep(0)  # the next turn
        return within_the_turn

    within_the_turn = asyncio.run(answer_in_one_turn())
    assert within_the_turn == before
    assert samples(metrics.registry) == observed_one_by_one()


def test_answers_observed_off_a_loop_are_written_at_once() -> None:
    metrics = Metrics()
    model = ModelMetrics(metrics, "m", "1")
    for code, protocol, seconds in ANSWERED:
        model.observe_request(code, seconds, protocol)
    assert samples(metrics.registry) == observed_one_by_one()
