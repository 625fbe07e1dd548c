"""The model zoo on the `tpu` runtime (XLA:CPU): every model loads, warmup compiles each shape
once, every batch size and length after it compiles nothing and matches the artifact on CPU
torch; over HTTP too. Prints each model's warmup compile time and per-batch time on both runtimes.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from appliance.batching import NamedDims, assemble
from appliance.config import ModelConfig
from appliance.repository import warm_up, warmup_shapes
from appliance.runtimes import ArtifactError, Runtime
from appliance.runtimes.torch_runtime import TorchRuntime
from appliance.runtimes.xla_runtime import XlaRuntime
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import get_json, infer
from tests.support.zoo import ZOO, Tolerance, model_toml
from tests.xla.device import DEVICE_LABEL, PJRT_DEVICE, uncached_compiles
from tests.xla.device import TOLERANCE as DEVICE_TOLERANCE
from tests.xla.xla_serving import config_toml

pytestmark = pytest.mark.xla

# Deeper graphs than the demo: XLA:CPU fuses and reorders more of their float arithmetic.
TOLERANCE: Tolerance = {**DEVICE_TOLERANCE, "rtol": max(DEVICE_TOLERANCE["rtol"], 1e-4)}
BUCKETS = (1, 2, 4)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # A fresh process: once torch_xla is imported, torch.nn.GRU no longer exports.
    root = tmp_path_factory.mktemp("zoo")
    subprocess.run([sys.executable, "-m", "tests.support.zoo", str(root)], check=True, timeout=600)
    return {name: root / f"{name}.pt2" for name in ZOO}


def config(zoo: dict[str, Path], name: str, runtime: str) -> ModelConfig:
    device = "tpu" if runtime == "tpu" else "cpu"
    return ModelConfig(
        model_path=str(zoo[name]),
        runtime=runtime,
        device=device,
        max_batch_size=BUCKETS[-1],
        **ZOO[name].config(),
    )


def serve_like_the_batcher(
    runtime: Runtime, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Pad one request to its buckets, run it, and cut the outputs back, as the batcher does."""
    assert runtime.signature is not None
    dims = NamedDims.of(runtime.signature, runtime.config.dims)
    rows = len(next(iter(inputs.values())))
    lengths = dims.lengths(inputs)
    bucket = next(size for size in runtime.config.batch_buckets if size >= rows)
    batch = assemble([inputs], bucket, dims, dims.padded(lengths))
    return dims.slice_outputs(runtime.run(batch), 0, rows, lengths)


def per_batch_ms(runtime: Runtime, batch: dict[str, np.ndarray], repeats: int = 20) -> float:
    """The median of `repeats` batches: the machine may be busy with other work."""
    runtime.run(batch)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.run(batch)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


@pytest.mark.parametrize("name", list(ZOO))
def test_each_zoo_model_compiles_once_per_shape_and_matches_cpu_torch(
    zoo: dict[str, Path], name: str, figures: Callable[[str], None]
) -> None:
    model = ZOO[name]
    runtime = XlaRuntime(config(zoo, name, "tpu"), zoo[name])
    runtime.load()
    # Loading may compile once: scalar buffers (batch norm's counters) reach XLA as constants.
    loaded = runtime.stats().compilations
    assert loaded <= 1
    started = time.perf_counter()
    warm_up(runtime, runtime.config.batch_buckets, runtime.config.dims, iterations=1)
    warmup_s = time.perf_counter() - started
    warmed = runtime.stats()
    shapes = len(list(warmup_shapes(runtime.config.batch_buckets, runtime.config.dims)))
    assert warmed.compilations - loaded == shapes, "one program per shape"
    assert warmed.fallback_ops == {}

    reference = model.exported_reference(zoo[name])
    rng = np.random.default_rng(7)
    compiles_before = uncached_compiles()
    lengths = range(1, model.dims["seq"][-1] + 1) if model.dims else [None]
    for rows in range(1, BUCKETS[-1] + 1):
        for length in lengths:
            inputs = model.example(rng, rows, {"seq": length} if length else None)
            outputs = serve_like_the_batcher(runtime, inputs)
            for output, want in reference(inputs).items():
                np.testing.assert_allclose(outputs[output], want, **TOLERANCE, err_msg=output)
    assert uncached_compiles() == compiles_before
    assert runtime.stats().compilations_after_warmup == 0

    largest = model.example(rng, BUCKETS[-1])
    cpu = TorchRuntime(config(zoo, name, "torch"), zoo[name])
    cpu.load()
    figures(
        f"zoo {name}: {shapes} shapes, warmup {warmup_s:.2f} s (compile "
        f"{sum(warmed.compile_seconds[loaded:]):.2f} s); per batch of {BUCKETS[-1]} at the largest "
        f"shape: tpu {per_batch_ms(runtime, largest):.2f} ms, torch "
        f"{per_batch_ms(cpu, largest):.2f} ms"
    )
    runtime.close()


def test_an_artifact_dynamic_dimension_without_buckets_is_refused_naming_it(
    zoo: dict[str, Path],
) -> None:
    path = zoo["encoder"]
    runtime = XlaRuntime(ModelConfig(model_path=str(path), runtime="tpu", device="tpu"), path)
    with pytest.raises(ArtifactError, match="input 'ids' dimension 1 is dynamic without buckets"):
        runtime.load()


@pytest.fixture(scope="module")
def zoo_server(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("zoo-server")
    models = "".join(
        model_toml(
            name,
            zoo[name],
            ZOO[name],
            runtime="tpu",
            device="tpu",
            max_batch_size=BUCKETS[-1],
            max_queue_delay_ms=20.0,
            max_concurrency=2,
            warmup_iters=1,
        )
        for name in ZOO
    )
    # The encoder again with its outputs undeclared: the export says `tokens` follows `seq`.
    models += model_toml(
        "encoder_outputs_undeclared",
        zoo["encoder"],
        dataclasses.replace(ZOO["encoder"], outputs=()),
        runtime="tpu",
        device="tpu",
        max_batch_size=BUCKETS[-1],
        warmup_iters=1,
    )
    env = {"PJRT_DEVICE": PJRT_DEVICE}
    with running_server(config_toml(workdir, models), workdir, env, ready_timeout_s=600) as server:
        yield server


def test_the_zoo_serves_over_http_on_tpu_and_compiles_nothing_after_warmup(
    zoo_server: ServerProcess, zoo: dict[str, Path]
) -> None:
    rng = np.random.default_rng(8)
    requests = []
    for name, model in ZOO.items():
        for _ in range(6 if model.dims else 2):
            rows = int(rng.integers(1, BUCKETS[-1] + 1))
            lengths = (
                {"seq": int(rng.integers(1, model.dims["seq"][-1] + 1))} if model.dims else None
            )
            requests.append((name, model.example(rng, rows, lengths)))
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda r: infer(zoo_server.url, r[0], r[1]), requests))
    references = {name: ZOO[name].exported_reference(zoo[name]) for name in ZOO}
    for (name, inputs), (status, outputs) in zip(requests, replies, strict=True):
        assert status == 200, outputs
        assert isinstance(outputs, dict)
        for output, want in references[name](inputs).items():
            np.testing.assert_allclose(outputs[output], want, **TOLERANCE, err_msg=output)
    value = scrape(zoo_server)
    for name, model in ZOO.items():
        labels = {"model": name, "version": "1", "device": DEVICE_LABEL}
        shapes = len(list(warmup_shapes(BUCKETS, model.dims)))
        # Each shape once, and loading at most once (see above).
        assert value("aegis_xla_compilations_total", phase="warmup", **labels) in (
            shapes,
            shapes + 1,
        )
        assert value("aegis_xla_compilations_total", phase="serving", **labels) == 0
    assert get_json(zoo_server.url, "/v2/models/encoder")["parameters"]["dims"] == {
        "seq": [8, 16, 32]
    }


def test_undeclared_outputs_that_follow_seq_come_back_at_the_requests_length_on_tpu(
    zoo_server: ServerProcess, zoo: dict[str, Path]
) -> None:
    encoder = ZOO["encoder"]
    inputs = encoder.example(np.random.default_rng(9), 2, {"seq": 5})  # padded to the bucket of 8
    status, outputs = infer(zoo_server.url, "encoder_outputs_undeclared", inputs)
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    want = encoder.exported_reference(zoo["encoder"])(inputs)
    assert outputs["tokens"].shape == (2, 5, 32)
    for name, expected in want.items():
        np.testing.assert_allclose(outputs[name], expected, **TOLERANCE, err_msg=name)
