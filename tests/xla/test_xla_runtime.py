"""XlaRuntime on XLA:CPU (PJRT_DEVICE=CPU): loading, outputs, static shapes, metrics, the cache.

One process holds one XLA device and one persistent-cache setting, so every runtime here is made
by `make_runtime`, which passes the session's cache folder. Programs compiled by one test are cached
for the next, so each test uses batch sizes no other test compiles: any order gives the same counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from appliance.config import ModelConfig
from appliance.demo import DEMO_INPUTS
from appliance.runtimes.xla_runtime import XlaRuntime
from tests.support.padding import pad
from tests.xla.device import (
    DEVICE_LABEL,
    ON_TPU,
    PJRT_DEVICE,
    TOLERANCE,
    uncached_compiles,
    without_tpu,
)
from tests.xla.xla_models import SIGNATURE, eager

pytestmark = pytest.mark.xla

RuntimeFactory = Callable[..., XlaRuntime]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture
def make_runtime(xla_artifacts: dict[str, Path], cache_dir: Path) -> RuntimeFactory:
    def make(artifact: str, **config: object) -> XlaRuntime:
        path = xla_artifacts[artifact]
        model = ModelConfig(
            model_path=str(path), runtime="tpu", device="tpu", **SIGNATURE, **config
        )
        runtime = XlaRuntime(model, path, compilation_cache_dir=str(cache_dir))
        runtime.load()
        return runtime

    return make


def warm(runtime: XlaRuntime, iterations: int = 2) -> dict[int, float]:
    """The lifecycle's warmup; returns the compile seconds spent per bucket."""
    per_bucket = {}
    for bucket in runtime.config.batch_buckets:
        compiled_before = len(runtime.stats().compile_seconds)
        for _ in range(iterations):
            runtime.warmup(bucket)
        per_bucket[bucket] = sum(runtime.stats().compile_seconds[compiled_before:])
    runtime.finish_warmup()
    return per_bucket


def serve_rows(runtime: XlaRuntime, rows: np.ndarray) -> np.ndarray:
    """What the batcher does with one request: pad to the bucket, run, keep the real rows."""
    bucket = next(size for size in runtime.config.batch_buckets if size >= len(rows))
    return runtime.run({"input__0": pad(rows, bucket)})["output__0"][: len(rows)]


@pytest.mark.parametrize("artifact", ["demo.pt2", "standardized.pt"])
def test_every_batch_size_matches_eager_and_compiles_nothing_after_warmup(
    make_runtime: RuntimeFactory, artifact: str, figures: Callable[[str], None]
) -> None:
    runtime = make_runtime(artifact, max_batch_size=64)
    assert runtime.device == DEVICE_LABEL
    buckets = runtime.config.batch_buckets
    assert buckets == (1, 2, 4, 8, 16, 32, 64)
    per_bucket = warm(runtime)
    warmed = runtime.stats()
    assert warmed.compilations == len(buckets), "one program per bucket, each compiled once"
    assert warmed.compilations_after_warmup == 0
    assert warmed.fallback_ops == {}

    rng = np.random.default_rng(1)
    compiles_before = uncached_compiles()
    for rows in range(1, runtime.config.max_batch_size + 1):
        batch = rng.standard_normal((rows, DEMO_INPUTS)).astype(np.float32)
        np.testing.assert_allclose(serve_rows(runtime, batch), eager(artifact, batch), **TOLERANCE)
    compiles_after = uncached_compiles()
    served = runtime.stats()
    cached = served.cached_compilations - warmed.cached_compilations

    assert compiles_after == compiles_before
    assert served.compilations == warmed.compilations
    assert served.compilations_after_warmup == 0
    assert cached == 64, "one cached program per batch"
    times = ", ".join(
        f"{bucket}: {seconds * 1000:.0f} ms" for bucket, seconds in per_bucket.items()
    )
    figures(f"{artifact} warmup compile time per bucket (XLA:CPU): {times}")
    figures(
        f"{artifact} batch sizes 1..64 served: UncachedCompile {compiles_before} -> "
        f"{compiles_after}, CachedCompile +{cached}, "
        f"compilations after warmup {served.compilations_after_warmup}"
    )
    runtime.close()


def test_a_shape_warmup_missed_is_counted_and_logged(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime("demo.pt2", max_batch_size=12, batch_buckets=[10, 12])
    warm(runtime, iterations=1)
    rows = np.ones((11, DEMO_INPUTS), dtype=np.float32)
    with capture_logs() as logs:
        output = runtime.run({"input__0": rows})["output__0"]
    np.testing.assert_allclose(output, eager("demo.pt2", rows), **TOLERANCE)
    stats = runtime.stats()
    assert stats.compilations_after_warmup == 1
    assert len(stats.compile_seconds) == stats.compilations
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["event"] == "xla_compiled_after_warmup"
    assert warning["input_shapes"] == {"input__0": [11, DEMO_INPUTS]}


def test_ops_that_fall_back_to_the_cpu_are_reported(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime("fallback.pt", max_batch_size=2, batch_buckets=[2])
    with capture_logs() as logs:
        warm(runtime, iterations=1)
    assert runtime.stats().fallback_ops == {"aten::special_erfcx": 1}
    assert any(entry.get("ops") == ["aten::special_erfcx"] for entry in logs)
    rows = np.linspace(-1, 1, 2 * DEMO_INPUTS, dtype=np.float32).reshape(2, DEMO_INPUTS)
    output = runtime.run({"input__0": rows})["output__0"]
    np.testing.assert_allclose(output, eager("fallback.pt", rows), **TOLERANCE)
    assert runtime.stats().fallback_ops == {"aten::special_erfcx": 2}


def test_concurrent_callers_get_their_own_rows_and_compile_nothing(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime("demo.pt2", max_batch_size=6, batch_buckets=[3, 6])
    warm(runtime, iterations=1)
    compiles_before = uncached_compiles()
    failures: list[BaseException] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                batch = rng.standard_normal((int(rng.integers(1, 7)), DEMO_INPUTS))
                batch = batch.astype(np.float32)
                np.testing.assert_allclose(
                    serve_rows(runtime, batch), eager("demo.pt2", batch), **TOLERANCE
                )
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert uncached_compiles() == compiles_before
    assert runtime.stats().compilations_after_warmup == 0


def test_the_compilation_cache_is_written(make_runtime: RuntimeFactory, cache_dir: Path) -> None:
    # Five rows is a shape no other test compiles, so this compiles in any test order.
    runtime = make_runtime("demo.pt2", max_batch_size=5, batch_buckets=[5])
    warm(runtime, iterations=1)
    assert runtime.stats().compilations >= 1
    [folder] = cache_dir.iterdir()
    assert folder.name == f"torch_xla-2.9.0-{PJRT_DEVICE.lower()}-0"
    assert any(entry.is_file() and entry.stat().st_size > 0 for entry in folder.iterdir())


# A fresh process that loads and warms the demo model with a given cache folder, and prints
# torch_xla's persistent-cache counters.
WARM_AND_COUNT = """
import json, sys
from pathlib import Path
import torch_xla.debug.metrics as metrics
from appliance.config import ModelConfig
from appliance.runtimes.xla_runtime import XlaRuntime

path = Path(sys.argv[1])
runtime = XlaRuntime(
    ModelConfig(model_path=str(path), runtime="tpu", device="tpu", max_batch_size=4), path,
    compilation_cache_dir=sys.argv[2],
)
runtime.load()
for bucket in runtime.config.batch_buckets:
    runtime.warmup(bucket)
names = ("PersistentCacheMiss", "PersistentCacheHit", "PersistentCacheDeserializeFailure")
print(json.dumps({name: metrics.counter_value(name) or 0 for name in names}))
"""


def run_python(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_a_restarted_process_looks_its_programs_up_in_the_cache(
    xla_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """The second process finds every program the first one wrote. XLA:CPU cannot deserialize
    them (it compiles again, counted as a deserialize failure), where a TPU loads them."""
    artifact = str(xla_artifacts["demo.pt2"])
    counts = []
    for _ in range(2):
        env = {**os.environ, "PJRT_DEVICE": PJRT_DEVICE}
        done = run_python(WARM_AND_COUNT, artifact, str(tmp_path), env=env)
        assert done.returncode == 0, done.stderr
        counts.append(json.loads(done.stdout.splitlines()[-1]))
    first, second = counts
    buckets = 3  # 1, 2 and 4 rows
    assert first == {
        "PersistentCacheMiss": buckets,
        "PersistentCacheHit": 0,
        "PersistentCacheDeserializeFailure": 0,
    }
    assert second["PersistentCacheMiss"] == 0
    assert second["PersistentCacheHit"] + second["PersistentCacheDeserializeFailure"] == buckets


OPEN_TPU = """
import sys
from pathlib import Path
from appliance.config import ModelConfig
from appliance.runtimes import DeviceUnavailable
from appliance.runtimes.xla_runtime import XlaRuntime

path = Path(sys.argv[1])
runtime = XlaRuntime(ModelConfig(model_path=str(path), runtime="tpu", device="tpu"), path)
try:
    runtime.load()
except DeviceUnavailable as error:
    print(f"DeviceUnavailable: {error}")
"""


@without_tpu
def test_no_pjrt_device_means_tpu_never_a_silent_xla_cpu(xla_artifacts: dict[str, Path]) -> None:
    """PJRT_DEVICE unset on a host without a TPU: load raises DeviceUnavailable at once (not
    libtpu's minutes of metadata retries, nor torch_xla's own quiet default of XLA:CPU)."""
    env = {name: value for name, value in os.environ.items() if name != "PJRT_DEVICE"}
    started = time.monotonic()
    done = run_python(OPEN_TPU, str(xla_artifacts["demo.pt2"]), env=env)
    assert done.returncode == 0, done.stderr
    assert "DeviceUnavailable: PJRT_DEVICE=TPU, but this host has no TPU chip" in done.stdout
    assert time.monotonic() - started < 60


# A fresh process given one chip the way the supervisor gives it (TPU_VISIBLE_CHIPS and the
# process bounds): loads and runs the demo model, then reports what it saw and opened.
ASSIGNED_CHIP = """
import json, os, sys
from pathlib import Path
from appliance.config import ModelConfig
from appliance.runtimes.xla_runtime import XlaRuntime

names = ("PJRT_DEVICE", "TPU_VISIBLE_CHIPS", "TPU_PROCESS_BOUNDS", "TPU_CHIPS_PER_PROCESS_BOUNDS",
         "TPU_PROCESS_PORT")
before = {name: os.environ.get(name) for name in names}
path = Path(sys.argv[1])
config = ModelConfig(model_path=str(path), runtime="tpu", device="tpu", max_batch_size=2)
runtime = XlaRuntime(config, path)
runtime.load()
runtime.warmup(2)
import torch_xla.runtime as xr
opened = set()
for fd in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    # TPU chips: /dev/accelN (v2-v4), or a VFIO group /dev/vfio/N (v5e and later).
    chip = target.startswith("/dev/accel") or target.startswith("/dev/vfio/")
    if chip and target != "/dev/vfio/vfio":
        opened.add(target)
after = {name: os.environ.get(name) for name in names}
print(json.dumps({"before": before, "after": after, "devices": xr.addressable_device_count(),
                  "device": runtime.device, "opened": sorted(opened)}))
"""


def test_the_runtime_opens_only_the_chip_its_process_is_given(
    xla_artifacts: dict[str, Path],
) -> None:
    """Nothing in the runtime overrides the chip assignment, and it opens one chip only."""
    # What the replica supervisor (appliance/lifecycle/replicas.py) gives replica 0.
    assignment = {
        "TPU_VISIBLE_CHIPS": "0",
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": "8476",
    }
    env = {**os.environ, "PJRT_DEVICE": PJRT_DEVICE, **assignment}
    done = run_python(ASSIGNED_CHIP, str(xla_artifacts["demo.pt2"]), env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["before"] == {"PJRT_DEVICE": PJRT_DEVICE, **assignment}
    assert seen["after"] == seen["before"]
    assert seen["devices"] == 1
    assert seen["device"] == DEVICE_LABEL
    assert len(seen["opened"]) == (1 if ON_TPU else 0), seen["opened"]
