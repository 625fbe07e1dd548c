"""The `jax` runtime in-process, on JAX's CPU backend with four host devices (the tier's XLA_FLAGS):
signatures from the artifacts, outputs against the references, compilations by phase, named
dimensions through `warmup(batch_size, dims)`, and the one device a process is given."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from appliance.config import ModelConfig
from appliance.repository.loader import warm_up
from appliance.runtimes import ArtifactError, jax_process
from appliance.runtimes.jax_runtime import JaxRuntime
from tests.jax_tier.jax_models import eager, example_inputs, masked_inputs, masked_reference
from tests.support.padding import pad

pytestmark = pytest.mark.jax

MAX_BATCH = 8
BUCKETS = (1, 2, 4, 8)
RuntimeFactory = Callable[..., JaxRuntime]


@pytest.fixture(scope="module", autouse=True)
def jax_on_the_cpu() -> None:
    jax_process.configure(wants_tpu=False, cache_base=None)


@pytest.fixture
def make_runtime(
    jax_artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[RuntimeFactory]:
    made: list[JaxRuntime] = []

    def make(artifact: str, device_index: int = 0, **settings: object) -> JaxRuntime:
        monkeypatch.setenv(jax_process.DEVICE_INDEX_VARIABLE, str(device_index))
        path = jax_artifacts.get(artifact) or Path(str(settings.pop("path")))
        config = ModelConfig(
            model_path=str(path), runtime="jax", max_batch_size=MAX_BATCH, **settings
        )
        runtime = JaxRuntime(config, path)
        runtime.load()
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def feed(runtime: JaxRuntime, inputs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    assert runtime.signature is not None
    return dict(zip((spec.name for spec in runtime.signature.inputs), inputs, strict=True))


@pytest.mark.parametrize("artifact", ["scorer.jax", "demo.pt2", "mixed.pt2", "deep.pt2"])
def test_every_batch_size_matches_the_reference_and_compiles_nothing_after_warmup(
    make_runtime: RuntimeFactory, artifact: str, jax_figures: Callable[[str], None]
) -> None:
    runtime = make_runtime(artifact)
    warm_up(runtime, BUCKETS, {}, iterations=2)
    warm = runtime.stats()
    assert warm.compilations >= len(BUCKETS)
    assert warm.compilations_after_warmup == 0
    for rows in range(1, MAX_BATCH + 1):
        bucket = next(size for size in BUCKETS if size >= rows)
        inputs = example_inputs(artifact, rows, seed=rows)
        served = runtime.run(feed(runtime, tuple(pad(array, bucket) for array in inputs)))
        assert runtime.signature is not None
        for spec, reference in zip(runtime.signature.outputs, eager(artifact, inputs), strict=True):
            got = served[spec.name][:rows]
            assert got.dtype == reference.dtype, spec.name
            np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, err_msg=spec.name)
    after = runtime.stats()
    assert after.compilations == warm.compilations
    assert after.compilations_after_warmup == 0
    jax_figures(
        f"in-process, {artifact}: batch sizes 1..{MAX_BATCH} match, {warm.compilations} "
        f"compilations at warmup ({sum(warm.compile_seconds):.2f} s), 0 after"
    )


def test_signature_comes_from_the_avals_and_names_from_the_config(
    make_runtime: RuntimeFactory,
) -> None:
    plain = make_runtime("scorer.jax")
    assert plain.signature is not None
    assert [(s.name, s.datatype, s.shape) for s in plain.signature.inputs] == [
        ("input__0", "FP32", (-1, 16)),
        ("input__1", "FP32", (-1, 1)),
    ]
    assert [(s.name, s.datatype, s.shape) for s in plain.signature.outputs] == [
        ("output__0", "INT32", (-1,)),
        ("output__1", "FP32", (-1, 5)),
    ]
    named = make_runtime(
        "scorer.jax",
        inputs=[
            {"name": "features", "datatype": "FP32", "shape": [-1, 16]},
            {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
        ],
        outputs=[
            {"name": "best", "datatype": "INT32", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, 5]},
        ],
    )
    inputs = example_inputs("scorer.jax", 3)
    served = named.run({"features": inputs[0], "scale": inputs[1]})
    best, scores = eager("scorer.jax", inputs)
    np.testing.assert_array_equal(served["best"], best)
    np.testing.assert_allclose(served["scores"], scores, rtol=1e-5, atol=1e-5)


def test_a_declared_datatype_the_artifact_does_not_take_is_refused(
    make_runtime: RuntimeFactory,
) -> None:
    with pytest.raises(ArtifactError, match="'features' is declared INT32, the model takes FP32"):
        make_runtime(
            "scorer.jax",
            inputs=[
                {"name": "features", "datatype": "INT32", "shape": [-1, 16]},
                {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
            ],
        )


def test_an_export_for_another_platform_is_refused_naming_it(
    make_runtime: RuntimeFactory,
) -> None:
    with pytest.raises(ArtifactError, match=r"exported for tpu, this process runs on cpu"):
        make_runtime("scorer-tpu-only.jax")


def test_a_file_that_is_not_an_export_is_refused(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    path = tmp_path / "garbage.jax"
    path.write_bytes(b"\x00not a flatbuffer" * 10)
    refused = r"garbage\.jax: not a serialized jax\.export\.Exported"
    with pytest.raises(ArtifactError, match=refused):
        make_runtime("garbage.jax", path=path)


def test_a_shape_warmup_missed_is_counted_and_logged(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime("demo.pt2")
    warm_up(runtime, (2,), {}, iterations=1)
    with capture_logs() as logs:
        runtime.run(feed(runtime, example_inputs("demo.pt2", 3)))
    stats = runtime.stats()
    assert stats.compilations_after_warmup == 1
    assert len(stats.compile_seconds) == stats.compilations
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["event"] == "jax_compiled_after_warmup"
    assert warning["input_shapes"] == {"input": [3, 64]}


MASKED_INPUTS = [
    {"name": "tokens", "datatype": "FP32", "shape": [-1, "seq", 4]},
    {"name": "mask", "datatype": "INT32", "shape": [-1, "seq"]},
]


def test_symbolic_dimensions_of_the_export_take_the_configured_names_and_buckets(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime("masked.jax", inputs=MASKED_INPUTS, dims={"seq": [8, 16]})
    assert runtime.signature is not None
    assert [spec.shape for spec in runtime.signature.inputs] == [(-1, "seq", 4), (-1, "seq")]
    assert [spec.shape for spec in runtime.signature.outputs] == [(-1, 4), (-1, "seq")]
    warm_up(runtime, (2, 4), runtime.config.dims, iterations=1)
    warm = runtime.stats().compilations
    assert warm >= 4, "one program per (batch, seq) bucket pair"
    tokens, mask = masked_inputs(3, 5)
    padded_tokens = np.zeros((4, 8, 4), np.float32)
    padded_tokens[:3, :5] = tokens
    padded_mask = np.zeros((4, 8), np.int32)
    padded_mask[:3, :5] = mask
    served = runtime.run({"tokens": padded_tokens, "mask": padded_mask})
    pooled, per_position = masked_reference(tokens, mask)
    np.testing.assert_allclose(served["output__0"][:3], pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served["output__1"][:3, :5], per_position, rtol=1e-5, atol=1e-6)
    assert runtime.stats().compilations == warm


def test_a_symbolic_dimension_without_a_configured_name_is_refused(
    make_runtime: RuntimeFactory,
) -> None:
    refusal = "input 'input__0' dimension 1 is dynamic without buckets"
    with pytest.raises(ArtifactError, match=refusal):
        make_runtime("masked.jax")


def test_one_export_symbol_gets_one_configured_name(make_runtime: RuntimeFactory) -> None:
    inputs = [MASKED_INPUTS[0], {**MASKED_INPUTS[1], "shape": [-1, "length"]}]
    with pytest.raises(ArtifactError, match="the export ties it to 'seq'"):
        make_runtime("masked.jax", inputs=inputs, dims={"seq": [8], "length": [8]})


def test_a_process_given_one_device_uses_only_that_one(make_runtime: RuntimeFactory) -> None:
    import jax

    assert len(jax.devices("cpu")) == 4, "the tier runs with four host devices"
    before = {id(array) for array in jax.live_arrays()}
    runtime = make_runtime("deep.pt2", device_index=2)
    assert runtime.device == "jax:cpu:2"
    warm_up(runtime, BUCKETS, {}, iterations=1)
    outputs = runtime.run(feed(runtime, example_inputs("deep.pt2", 4)))
    assert outputs["output__0"].shape == (4, 10)
    made = [array for array in jax.live_arrays() if id(array) not in before]
    assert len(made) >= 48 * 2, "the weights are on the device"
    assert {(device.platform, device.id) for array in made for device in array.devices()} == {
        ("cpu", 2)
    }
