"""`runtime = "tpu"` through the real server (`python -m appliance serve`) on XLA:CPU, and the
CPU-fallback modes where no XLA device can be opened (PJRT_DEVICE=TPU on a host without a TPU)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from appliance.demo import DEMO_INPUTS
from tests.support.http import get_json
from tests.support.logs import log_events
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server, start_server
from tests.xla.device import DEVICE_LABEL, PJRT_DEVICE, TOLERANCE, without_tpu
from tests.xla.xla_models import eager
from tests.xla.xla_serving import MAX_BATCH, answer, config_toml, infer, model_toml, post_infer

pytestmark = pytest.mark.xla

BUCKETS = (1, 2, 4, 8, 16)
SERVED = {"demo": "demo.pt2", "standardized": "standardized.pt"}


@pytest.fixture(scope="module")
def xla_server(
    tmp_path_factory: pytest.TempPathFactory, xla_artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("xla-server")
    models = "".join(model_toml(name, xla_artifacts[SERVED[name]]) for name in SERVED)
    with running_server(
        config_toml(workdir, models), workdir, {"PJRT_DEVICE": PJRT_DEVICE}
    ) as server:
        yield server


def test_models_are_served_on_xla(xla_server: ServerProcess) -> None:
    for name in SERVED:
        metadata = get_json(xla_server, f"/v2/models/{name}")
        assert metadata["platform"] == "pytorch_xla"
        parameters = metadata["parameters"]
        assert (parameters["device"], parameters["runtime"]) == (DEVICE_LABEL, "tpu")
    # The export's Dim("batch", min=1, max=1024); TorchScript carries no limits.
    assert get_json(xla_server, "/v2/models/demo")["parameters"]["dimension_limits"] == [
        {"input": "input__0", "axis": 0, "min": 1, "max": 1024}
    ]
    assert "dimension_limits" not in get_json(xla_server, "/v2/models/standardized")["parameters"]


def test_every_batch_size_matches_eager_and_serving_compiles_nothing(
    xla_server: ServerProcess, figures: Callable[[str], None]
) -> None:
    rng = np.random.default_rng(3)
    warm = scrape(xla_server)
    for name, artifact in SERVED.items():
        labels = {"model": name, "version": "1", "device": DEVICE_LABEL}
        assert warm("aegis_model_ready", model=name, version="1", device=DEVICE_LABEL) == 1
        assert warm("aegis_xla_compilations_total", phase="warmup", **labels) == len(BUCKETS)
        assert warm("aegis_xla_compilations_total", phase="serving", **labels) == 0
        assert warm("aegis_xla_compile_seconds_count", **labels) == len(BUCKETS)
        assert warm("aegis_xla_compile_seconds_sum", **labels) > 0
        for rows in range(1, MAX_BATCH + 1):
            batch = rng.standard_normal((rows, DEMO_INPUTS)).astype(np.float32)
            np.testing.assert_allclose(
                infer(xla_server, name, batch), eager(artifact, batch), **TOLERANCE
            )
    served = scrape(xla_server)
    for name in SERVED:
        labels = {"model": name, "version": "1", "device": DEVICE_LABEL}
        assert served("aegis_xla_compilations_total", phase="serving", **labels) == 0
        assert served("aegis_xla_compilations_total", phase="warmup", **labels) == len(BUCKETS)
        cached_before = warm("aegis_xla_cached_compilations_total", **labels)
        cached_after = served("aegis_xla_cached_compilations_total", **labels)
        assert cached_after - cached_before == MAX_BATCH, "one cached program per request"
        figures(
            f"over HTTP, {name} ({SERVED[name]}): batch sizes 1..{MAX_BATCH} served, "
            f"aegis_xla_compilations_total{{phase=serving}} 0, warmup {len(BUCKETS)}, "
            f"aegis_xla_cached_compilations_total {cached_before:.0f} -> {cached_after:.0f}"
        )
    per_bucket: dict[int, float] = {}
    for entry in log_events(xla_server, "xla_warmup"):
        if entry["artifact"] == "demo.pt2":
            size = entry["batch_size"]
            per_bucket[size] = per_bucket.get(size, 0.0) + entry["compile_seconds"]
    assert sorted(per_bucket) == list(BUCKETS)
    times = ", ".join(f"{size}: {seconds * 1000:.0f} ms" for size, seconds in per_bucket.items())
    figures(f"over HTTP, demo.pt2 warmup compile time per bucket (server log): {times}")


@without_tpu
def test_no_xla_device_serves_on_the_cpu_and_says_so(
    tmp_path: Path, xla_artifacts: dict[str, Path]
) -> None:
    models = model_toml("demo", xla_artifacts["demo.pt2"], cpu_fallback="unavailable")
    with running_server(config_toml(tmp_path, models), tmp_path, {"PJRT_DEVICE": "TPU"}) as server:
        assert get_json(server, "/v2/models/demo")["parameters"]["device"] == "cpu"
        assert scrape(server)("aegis_model_ready", model="demo", version="1", device="cpu") == 1
        [warning] = log_events(server, "serving_on_cpu")
        assert "no TPU chip" in warning["reason"]
        [ready] = log_events(server, "model_ready")
        assert ready["device"] == "cpu" and "no TPU chip" in ready["fallback"]
        rows = np.random.default_rng(4).standard_normal((5, DEMO_INPUTS)).astype(np.float32)
        np.testing.assert_allclose(
            infer(server, "demo", rows), eager("demo.pt2", rows), **TOLERANCE
        )


def test_overflow_sends_what_the_full_xla_queue_cannot_take_to_the_cpu(
    tmp_path: Path, xla_artifacts: dict[str, Path]
) -> None:
    models = model_toml(
        "demo",
        xla_artifacts["demo.pt2"],
        cpu_fallback="overflow",
        max_queue_size=4,
        max_concurrency=1,
        max_queue_delay_ms=20.0,
    )
    with running_server(
        config_toml(tmp_path, models), tmp_path, {"PJRT_DEVICE": PJRT_DEVICE}
    ) as server:
        assert get_json(server, "/v2/models/demo")["parameters"]["device"] == DEVICE_LABEL
        rng = np.random.default_rng(5)
        requests = [rng.standard_normal((2, DEMO_INPUTS)).astype(np.float32) for _ in range(48)]
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda rows: post_infer(server, "demo", rows), requests))
        # Beyond both replicas' queues a request is still refused: only the 200s are checked.
        for rows, (status, payload) in zip(requests, replies, strict=True):
            if status == 200:
                np.testing.assert_allclose(answer(payload), eager("demo.pt2", rows), **TOLERANCE)
            else:
                assert (status, payload["error"]) == (503, "queue full (4 requests waiting)")
        value = scrape(server)
        overflowed = value(
            "aegis_cpu_fallback_requests_total", model="demo", version="1", reason="overflow"
        )
        assert overflowed > 0
        labels = {"model": "demo", "version": "1", "device": DEVICE_LABEL}
        assert value("aegis_xla_compilations_total", phase="serving", **labels) == 0


@without_tpu
def test_fallback_off_fails_the_start_with_a_clear_message(
    tmp_path: Path, xla_artifacts: dict[str, Path]
) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(
        config_toml(tmp_path, model_toml("demo", xla_artifacts["demo.pt2"], cpu_fallback="off"))
    )
    server = start_server(config, tmp_path / "server.log", {"PJRT_DEVICE": "TPU"})
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    assert code != 0
    [failure] = log_events(server, "start_failed")
    assert "'demo'" in failure["reason"]
    assert "PJRT_DEVICE=TPU, but this host has no TPU chip" in failure["reason"]
