"""The model zoo as torch.export `.pt2` through `runtime = "jax"` (torchax under `jax.jit`, JAX's
CPU backend) over HTTP: every model serves every batch size (and every length of the encoder's
named dimension) up to the largest bucket, matches the artifact run by eager torch, and compiles
nothing after warmup."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from appliance.repository import warmup_shapes
from tests.jax_tier.jax_serving import CPU, config_toml
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import infer
from tests.support.zoo import ZOO, Tolerance, model_toml

pytestmark = pytest.mark.jax

BUCKETS = (1, 2, 4)
# torchax lowers the aten graph to other XLA ops than eager torch runs: float sums in another order.
TOLERANCE: Tolerance = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    subprocess.run([sys.executable, "-m", "tests.support.zoo", str(root)], check=True, timeout=600)
    return {name: root / f"{name}.pt2" for name in ZOO}


@pytest.fixture(scope="module")
def zoo_server(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("zoo-jax")
    models = "".join(
        model_toml(
            name,
            zoo[name],
            ZOO[name],
            runtime="jax",
            device="cpu",
            max_batch_size=BUCKETS[-1],
            max_queue_delay_ms=20.0,
            warmup_iters=1,
        )
        for name in ZOO
    )
    with running_server(config_toml(workdir, models), workdir, ready_timeout_s=600) as server:
        yield server


def test_the_zoo_serves_through_jax_matches_torch_and_compiles_nothing_after_warmup(
    zoo_server: ServerProcess, zoo: dict[str, Path]
) -> None:
    rng = np.random.default_rng(11)
    requests = []
    for name, model in ZOO.items():
        lengths = range(1, model.dims["seq"][-1] + 1) if model.dims else [None]
        for rows in range(1, BUCKETS[-1] + 1):
            for length in lengths:
                inputs = model.example(rng, rows, {"seq": length} if length else None)
                requests.append((name, inputs))
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda r: infer(zoo_server.url, r[0], r[1]), requests))
    references = {name: ZOO[name].exported_reference(zoo[name]) for name in ZOO}
    for (name, inputs), (status, outputs) in zip(requests, replies, strict=True):
        assert status == 200, (name, outputs)
        assert isinstance(outputs, dict)
        for output, want in references[name](inputs).items():
            np.testing.assert_allclose(
                outputs[output], want, **TOLERANCE, err_msg=f"{name} {output}"
            )
    value = scrape(zoo_server)
    for name, model in ZOO.items():
        labels = {"model": name, "version": "1", "device": CPU}
        shapes = len(list(warmup_shapes(BUCKETS, model.dims)))
        assert value("aegis_xla_compilations_total", phase="warmup", **labels) >= shapes
        assert value("aegis_xla_compilations_total", phase="serving", **labels) == 0
