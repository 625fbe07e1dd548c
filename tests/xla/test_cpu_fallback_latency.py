"""`cpu_fallback = "latency"` on XLA:CPU as the device: under a load of large requests that keeps
the device's queue deep, one-row requests go where they are predicted to finish first (the CPU
replica) and answer as the device would; with no load they all stay on the device. The slowness
is real load on a real compiled model, never a sleep. The latencies are printed as figures;
bench/cpu_fallback.py measures them on a quiet machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.demo import DEMO_INPUTS
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server
from tests.xla.device import DEVICE_LABEL, PJRT_DEVICE, TOLERANCE
from tests.xla.wide import export_wide, wide_eager
from tests.xla.xla_serving import config_toml, infer, model_toml, post_infer

pytestmark = pytest.mark.xla

LOAD_ROWS = 16  # every background request is a full batch
LOAD_CLIENTS = 6
PROBES = 40


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_wide(tmp_path_factory.mktemp("wide") / "wide.pt2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, wide: Path) -> Iterator[ServerProcess]:
    """The same model twice on the device: routed by latency, and falling back only when the
    device is unavailable."""
    workdir = tmp_path_factory.mktemp("latency-routing")
    common = {"max_queue_delay_ms": 2.0, "max_queue_size": 256, "timeout_ms": 60000}
    models = model_toml("routed", wide, cpu_fallback="latency", **common) + model_toml(
        "device_only", wide, cpu_fallback="unavailable", **common
    )
    environment = {"PJRT_DEVICE": PJRT_DEVICE, "OMP_NUM_THREADS": "1"}
    with running_server(config_toml(workdir, models), workdir, environment) as served:
        yield served


def probe_latencies(server: ServerProcess, model: str, rng: np.random.Generator) -> list[float]:
    """One-row probes, one after another, while LOAD_CLIENTS send full batches back to back."""
    stop = threading.Event()
    load_rows = rng.standard_normal((LOAD_ROWS, DEMO_INPUTS)).astype(np.float32)

    def load() -> None:
        while not stop.is_set():
            status, payload = post_infer(server, model, load_rows)
            assert status == 200, payload

    clients = [threading.Thread(target=load, daemon=True) for _ in range(LOAD_CLIENTS)]
    for client in clients:
        client.start()
    latencies = []
    try:
        # The load's first batches have run: the queue is deep from here on.
        for _ in range(PROBES):
            row = rng.standard_normal((1, DEMO_INPUTS)).astype(np.float32)
            started = time.perf_counter()
            output = infer(server, model, row)
            latencies.append(time.perf_counter() - started)
            np.testing.assert_allclose(output, wide_eager(row), **TOLERANCE)
    finally:
        stop.set()
        for client in clients:
            client.join(60)
    return latencies


def test_idle_requests_all_stay_on_the_device(server: ServerProcess) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        row = rng.standard_normal((1, DEMO_INPUTS)).astype(np.float32)
        np.testing.assert_allclose(infer(server, "routed", row), wide_eager(row), **TOLERANCE)
    value = scrape(server)
    for reason in ("latency", "overflow", "unavailable"):
        labels = {"model": "routed", "version": "1", "reason": reason}
        assert value("aegis_cpu_fallback_requests_total", **labels) == 0


def test_small_requests_behind_a_deep_device_queue_go_to_the_cpu_with_the_devices_answer(
    server: ServerProcess, figures: Callable[[str], None]
) -> None:
    rng = np.random.default_rng(2)
    behind_device = probe_latencies(server, "device_only", rng)
    routed = probe_latencies(server, "routed", rng)
    value = scrape(server)
    moved = value(
        "aegis_cpu_fallback_requests_total", model="routed", version="1", reason="latency"
    )
    stayed = value(
        "aegis_cpu_fallback_requests_total", model="device_only", version="1", reason="latency"
    )
    assert moved > 0 and stayed == 0
    # The estimates routing used are on the metrics page, for the device and the CPU.
    for device, bucket in (("cpu", "1"), (DEVICE_LABEL, "1"), (DEVICE_LABEL, str(LOAD_ROWS))):
        labels = {"model": "routed", "version": "1", "device": device, "bucket": bucket}
        assert value("aegis_batch_seconds_average", **labels) > 0
    p99_device = float(np.percentile(behind_device, 99))
    p99_routed = float(np.percentile(routed, 99))
    figures(
        f"latency routing, {PROBES} one-row probes under {LOAD_CLIENTS} clients of {LOAD_ROWS}"
        f" rows: p50/p99 {np.percentile(routed, 50) * 1e3:.1f}/{p99_routed * 1e3:.1f} ms routed,"
        f" {np.percentile(behind_device, 50) * 1e3:.1f}/{p99_device * 1e3:.1f} ms behind the"
        f" device; {moved:.0f} moved to the CPU"
    )
    # How much sooner they finish is bench/cpu_fallback.py's to say: on two shared cores a probe
    # moved to the CPU waits for a core like everything else, so no latency is asserted here.
    labels = {"model": "routed", "version": "1", "device": DEVICE_LABEL, "phase": "serving"}
    assert value("aegis_xla_compilations_total", **labels) == 0
