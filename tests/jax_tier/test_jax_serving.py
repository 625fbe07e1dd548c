"""`runtime = "jax"` through the real server (`python -m appliance serve`) on JAX's CPU backend,
driven by tritonclient with JSON and binary tensors; the persistent compilation cache across a
restart; the device a process is given; and the CPU-fallback modes on a host without a TPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.jax_tier.jax_models import eager, example_inputs, masked_inputs, masked_reference
from tests.jax_tier.jax_serving import BUCKETS, CPU, MAX_BATCH, config_toml, model_toml
from tests.support.http import get_json
from tests.support.logs import log_events
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server, start_server

pytestmark = pytest.mark.jax

SERVED = {"scorer": "scorer.jax", "demo": "demo.pt2", "deep": "deep.pt2", "mixed": "mixed.pt2"}


def infer(
    server: ServerProcess, model: str, inputs: tuple[np.ndarray, ...], *, binary: bool
) -> list[np.ndarray]:
    """The outputs of `model` for `inputs`, in the order its metadata lists them."""
    metadata = get_json(server, f"/v2/models/{model}")
    client = httpclient.InferenceServerClient(server.address, network_timeout=60)
    try:
        given = []
        for spec, array in zip(metadata["inputs"], inputs, strict=True):
            tensor = httpclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array, binary_data=binary)
            given.append(tensor)
        wanted = [
            httpclient.InferRequestedOutput(spec["name"], binary_data=binary)
            for spec in metadata["outputs"]
        ]
        result = client.infer(model, given, outputs=wanted)
        return [result.as_numpy(spec["name"]) for spec in metadata["outputs"]]
    finally:
        client.close()


@pytest.fixture(scope="module")
def jax_server(
    tmp_path_factory: pytest.TempPathFactory, jax_artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("jax-server") / "first"
    models = "".join(model_toml(name, jax_artifacts[SERVED[name]]) for name in SERVED)
    with running_server(config_toml(workdir, models), workdir, ready_timeout_s=300) as server:
        yield server


def test_models_are_served_on_jax(jax_server: ServerProcess) -> None:
    platforms = {
        "scorer": "jax_export",
        "demo": "pytorch_torchax",
        "deep": "pytorch_torchax",
        "mixed": "pytorch_torchax",
    }
    for name, platform in platforms.items():
        metadata = get_json(jax_server, f"/v2/models/{name}")
        assert metadata["platform"] == platform
        assert (metadata["parameters"]["device"], metadata["parameters"]["runtime"]) == (CPU, "jax")
    scorer = get_json(jax_server, "/v2/models/scorer")
    assert scorer["inputs"] == [
        {"name": "input__0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "input__1", "datatype": "FP32", "shape": [-1, 1]},
    ]
    assert scorer["outputs"] == [
        {"name": "output__0", "datatype": "INT32", "shape": [-1]},
        {"name": "output__1", "datatype": "FP32", "shape": [-1, 5]},
    ]


def test_every_batch_size_matches_the_reference_and_serving_compiles_nothing(
    jax_server: ServerProcess, jax_figures: Callable[[str], None]
) -> None:
    warm = scrape(jax_server)
    for name, artifact in SERVED.items():
        labels = {"model": name, "version": "1", "device": CPU}
        assert warm("aegis_model_ready", model=name, version="1", device=CPU) == 1
        assert warm("aegis_xla_compilations_total", phase="warmup", **labels) >= len(BUCKETS)
        assert warm("aegis_xla_compilations_total", phase="serving", **labels) == 0
        assert warm("aegis_xla_compile_seconds_sum", **labels) > 0
        for rows in range(1, MAX_BATCH + 1):
            inputs = example_inputs(artifact, rows, seed=rows)
            references = eager(artifact, inputs)
            for binary in (True, False):
                served = infer(jax_server, name, inputs, binary=binary)
                for got, reference in zip(served, references, strict=True):
                    assert got.dtype == reference.dtype
                    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
    served_page = scrape(jax_server)
    for name, artifact in SERVED.items():
        labels = {"model": name, "version": "1", "device": CPU}
        assert served_page("aegis_xla_compilations_total", phase="serving", **labels) == 0
        warmup = served_page("aegis_xla_compilations_total", phase="warmup", **labels)
        seconds = served_page("aegis_xla_compile_seconds_sum", **labels)
        jax_figures(
            f"over HTTP, {name} ({artifact}): batch sizes 1..{MAX_BATCH}, JSON and binary, "
            f"match; compilations warmup {warmup:.0f} ({seconds:.2f} s), serving 0"
        )


SEQ_BUCKETS = (4, 8)
MASKED_TABLES = (
    "[models.dims]\nseq = [4, 8]\n"
    '[[models.inputs]]\nname = "tokens"\ndatatype = "FP32"\nshape = [-1, "seq", 4]\n'
    '[[models.inputs]]\nname = "mask"\ndatatype = "INT32"\nshape = [-1, "seq"]\n'
    '[[models.outputs]]\nname = "pooled"\ndatatype = "FP32"\nshape = [-1, 4]\n'
    '[[models.outputs]]\nname = "per_position"\ndatatype = "FP32"\nshape = [-1, "seq"]\n'
)


@pytest.mark.parametrize("artifact", ["masked.jax", "masked.pt2"])
def test_every_batch_size_and_length_matches_and_serving_compiles_nothing(
    tmp_path: Path,
    jax_artifacts: dict[str, Path],
    jax_figures: Callable[[str], None],
    artifact: str,
) -> None:
    models = model_toml("masked", jax_artifacts[artifact]) + MASKED_TABLES
    with running_server(config_toml(tmp_path, models), tmp_path, ready_timeout_s=300) as server:
        labels = {"model": "masked", "version": "1", "device": CPU}
        warm = scrape(server)
        warmup = warm("aegis_xla_compilations_total", phase="warmup", **labels)
        assert warmup >= len(BUCKETS) * len(SEQ_BUCKETS)
        for rows in range(1, MAX_BATCH + 1):
            for length in range(1, SEQ_BUCKETS[-1] + 1):
                inputs = masked_inputs(rows, length, seed=rows * 100 + length)
                served = infer(server, "masked", inputs, binary=length % 2 == 0)
                references = masked_reference(*inputs)
                for got, reference in zip(served, references, strict=True):
                    assert got.shape == reference.shape
                    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
        after = scrape(server)
        assert after("aegis_xla_compilations_total", phase="serving", **labels) == 0
        assert after("aegis_xla_compilations_total", phase="warmup", **labels) == warmup
        jax_figures(
            f"over HTTP, {artifact}: batch sizes 1..{MAX_BATCH} x lengths 1..{SEQ_BUCKETS[-1]} "
            f"(seq buckets {list(SEQ_BUCKETS)}) match; compilations warmup {warmup:.0f}, serving 0"
        )


def test_a_restart_reads_its_programs_from_the_compilation_cache(
    jax_server: ServerProcess,
    jax_artifacts: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    jax_figures: Callable[[str], None],
) -> None:
    first = scrape(jax_server)
    labels = {"model": "deep", "version": "1", "device": CPU}
    compile_seconds = first("aegis_xla_compile_seconds_sum", **labels)
    [folder] = (jax_server.log_path.parent.parent / "xla-cache").iterdir()
    assert folder.name.startswith("jax-")
    assert any(folder.iterdir()), "the first start wrote its programs"
    workdir = jax_server.log_path.parent.parent / "second"
    models = model_toml("deep", jax_artifacts["deep.pt2"])
    with running_server(config_toml(workdir, models), workdir, ready_timeout_s=300) as restarted:
        again = scrape(restarted)
        cached = again("aegis_xla_cached_compilations_total", **labels)
        assert cached >= len(BUCKETS)
        assert again("aegis_xla_compilations_total", phase="serving", **labels) == 0
        inputs = example_inputs("deep.pt2", 3)
        [output] = infer(restarted, "deep", inputs, binary=True)
        np.testing.assert_allclose(output, eager("deep.pt2", inputs)[0], rtol=1e-5, atol=1e-5)
        jax_figures(
            f"deep.pt2 warmup: {compile_seconds:.3f} s compiling on the first start, "
            f"{again('aegis_xla_compile_seconds_sum', **labels):.3f} s on a restart with "
            f"{cached:.0f} programs from {folder.name}/"
        )


def test_a_process_given_one_device_serves_on_that_one(
    tmp_path: Path, jax_artifacts: dict[str, Path]
) -> None:
    models = model_toml("deep", jax_artifacts["deep.pt2"]) + model_toml(
        "scorer", jax_artifacts["scorer.jax"]
    )
    env = {"AEGIS_JAX_DEVICE": "3"}
    with running_server(config_toml(tmp_path, models), tmp_path, env, 300) as server:
        for name in ("deep", "scorer"):
            assert get_json(server, f"/v2/models/{name}")["parameters"]["device"] == "jax:cpu:3"
        inputs = example_inputs("scorer.jax", 2)
        served = infer(server, "scorer", inputs, binary=True)
        for got, reference in zip(served, eager("scorer.jax", inputs), strict=True):
            np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
        [configured] = log_events(server, "jax_configured")
        assert configured["platforms"] == "cpu" and configured["device_index"] == "3"


def test_a_device_index_beyond_the_devices_fails_the_start_naming_it(
    tmp_path: Path, jax_artifacts: dict[str, Path]
) -> None:
    config = tmp_path / "aegis.toml"
    config.write_text(config_toml(tmp_path, model_toml("demo", jax_artifacts["demo.pt2"])))
    server = start_server(config, tmp_path / "server.log", {"AEGIS_JAX_DEVICE": "9"})
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    assert code != 0
    [failure] = log_events(server, "start_failed")
    assert "AEGIS_JAX_DEVICE=9, but JAX sees 4 cpu device(s)" in failure["reason"]


def test_no_tpu_serves_on_the_cpu_by_the_runtime_that_reads_the_artifact(
    tmp_path: Path, jax_artifacts: dict[str, Path]
) -> None:
    models = model_toml("scorer", jax_artifacts["scorer.jax"], device="tpu") + model_toml(
        "demo", jax_artifacts["demo.pt2"], device="tpu"
    )
    with running_server(config_toml(tmp_path, models), tmp_path, ready_timeout_s=300) as server:
        for name, where in (("scorer", (CPU, "jax")), ("demo", ("cpu", "torch"))):
            parameters = get_json(server, f"/v2/models/{name}")["parameters"]
            assert (parameters["device"], parameters["runtime"]) == where
        [configured] = log_events(server, "jax_configured")
        assert configured["platforms"] == "cpu"
        assert "no TPU chip on its PCI bus" in configured["unavailable"]["tpu"]
        warnings = log_events(server, "serving_on_cpu")
        assert len(warnings) == 2
        assert all("no JAX tpu device" in warning["reason"] for warning in warnings)
        for name, artifact in (("scorer", "scorer.jax"), ("demo", "demo.pt2")):
            inputs = example_inputs(artifact, 3)
            served = infer(server, name, inputs, binary=False)
            for got, reference in zip(served, eager(artifact, inputs), strict=True):
                np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_fallback_off_fails_the_start_with_a_clear_message(
    tmp_path: Path, jax_artifacts: dict[str, Path]
) -> None:
    config = tmp_path / "aegis.toml"
    models = model_toml("deep", jax_artifacts["deep.pt2"], device="tpu", cpu_fallback="off")
    config.write_text(config_toml(tmp_path, models))
    server = start_server(config, tmp_path / "server.log")
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    assert code != 0
    [failure] = log_events(server, "start_failed")
    assert "'deep'" in failure["reason"]
    assert "no JAX tpu device: this host has no TPU chip on its PCI bus" in failure["reason"]
