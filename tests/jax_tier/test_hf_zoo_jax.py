"""Hugging Face models exported as they come (tests/support/hf_zoo.py), by the main venv's newer
torch, served by `runtime = "jax"` (torchax under `jax.jit`, JAX's CPU backend, torch 2.9) over
HTTP: warmup compiles every shape, every batch size and length after it compiles nothing, and every
reply, cut back to the request's own length, matches the eager module (given the artifact's
weights). Prints each model's compilations and largest difference."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from appliance.repository import warmup_shapes
from tests.jax_tier.jax_serving import CPU, config_toml
from tests.support.frontends import serve_through_front_ends
from tests.support.hf_zoo import HF_ZOO, SEQ_BUCKETS, export_with_main_venv
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import infer
from tests.support.zoo import Tolerance, model_toml

pytestmark = pytest.mark.jax

# torchax lowers the aten graph to other XLA ops than eager torch runs: float sums in another order.
TOLERANCE: Tolerance = {"rtol": 1e-4, "atol": 1e-5}
BUCKETS = (1, 2, 4)


@pytest.fixture(scope="module")
def hf_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_with_main_venv(tmp_path_factory.mktemp("hf-zoo"))


@pytest.fixture(scope="module")
def hf_server(
    tmp_path_factory: pytest.TempPathFactory, hf_zoo: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("hf-zoo-server")
    models = "".join(
        model_toml(
            name,
            hf_zoo[name],
            HF_ZOO[name],
            runtime="jax",
            device="cpu",
            max_batch_size=BUCKETS[-1],
            max_queue_delay_ms=20.0,
            warmup_iters=1,
        )
        for name in HF_ZOO
    )
    with running_server(config_toml(workdir, models), workdir, ready_timeout_s=600) as server:
        yield server


def test_hugging_face_models_serve_on_jax_match_eager_and_compile_nothing_after_warmup(
    hf_server: ServerProcess, hf_zoo: dict[str, Path], jax_figures: Callable[[str], None]
) -> None:
    rng = np.random.default_rng(31)
    requests = []
    for name, model in HF_ZOO.items():
        # Every length of the largest bucket in steps of 3: each bucket, each batch bucket.
        lengths = range(1, SEQ_BUCKETS[-1] + 1, 3) if model.dims else [None]
        for rows in range(1, BUCKETS[-1] + 1):
            for length in lengths:
                requests.append(
                    (
                        name,
                        model.example(
                            rng, rows, cast("Mapping[str, int] | None", length and {"seq": length})
                        ),
                    )
                )
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda r: infer(hf_server.url, r[0], r[1]), requests))
    references = {name: model.eager_reference(hf_zoo[name]) for name, model in HF_ZOO.items()}
    differences = dict.fromkeys(HF_ZOO, 0.0)
    for (name, inputs), (status, outputs) in zip(requests, replies, strict=True):
        assert status == 200, (name, outputs)
        assert isinstance(outputs, dict)
        for output, want in references[name](inputs).items():
            assert outputs[output].shape == want.shape, (name, output)
            np.testing.assert_allclose(
                outputs[output], want, **TOLERANCE, err_msg=f"{name} {output}"
            )
            difference = float(np.abs(outputs[output] - want).max())
            differences[name] = max(differences[name], difference)
    value = scrape(hf_server)
    for name, model in HF_ZOO.items():
        labels = {"model": name, "version": "1", "device": CPU}
        shapes = len(list(warmup_shapes(BUCKETS, model.dims)))
        warmup = value("aegis_xla_compilations_total", phase="warmup", **labels)
        serving = value("aegis_xla_compilations_total", phase="serving", **labels)
        jax_figures(
            f"hf zoo {name} on jax: {shapes} shapes, {warmup:.0f} compilations at warmup, "
            f"{serving:.0f} after; max abs diff vs eager {differences[name]:.1e}"
        )
        assert warmup >= shapes, name
        assert serving == 0, name


@pytest.fixture(scope="module")
def front_ends_server(
    tmp_path_factory: pytest.TempPathFactory, hf_zoo: dict[str, Path]
) -> Iterator[ServerProcess]:
    """BERT behind two front ends and one engine."""
    workdir = tmp_path_factory.mktemp("hf-zoo-front-ends")
    model = model_toml(
        "bert",
        hf_zoo["bert"],
        HF_ZOO["bert"],
        runtime="jax",
        device="cpu",
        max_batch_size=BUCKETS[-1],
        max_queue_delay_ms=20.0,
        warmup_iters=1,
    )
    config = config_toml(workdir, model).replace("[server]\n", "[server]\nfrontends = 2\n", 1)
    with running_server(config, workdir, ready_timeout_s=600) as server:
        yield server


def test_a_zoo_model_serves_on_jax_through_two_front_ends_and_one_engine(
    front_ends_server: ServerProcess, hf_zoo: dict[str, Path]
) -> None:
    reference = HF_ZOO["bert"].eager_reference(hf_zoo["bert"])
    serve_through_front_ends(
        front_ends_server, "bert", HF_ZOO["bert"], reference, TOLERANCE, "jaxlib", BUCKETS[-1]
    )
