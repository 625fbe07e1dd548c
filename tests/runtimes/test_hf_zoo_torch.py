"""Hugging Face models exported as they come (tests/support/hf_zoo.py) on the torch runtime, over
HTTP from the real server: each matches its eager module, and text requests of any length come
back at their own length, whether the length is padded to buckets or served as sent."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.support.config import server_config
from tests.support.hf_zoo import HF_ZOO, SEQ_BUCKETS
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import get_json, infer
from tests.support.zoo import MAX_SEQ, Tolerance, export_zoo, model_toml

TOLERANCE: Tolerance = {"rtol": 1e-5, "atol": 1e-5}
TEXT = [name for name, model in HF_ZOO.items() if model.dims]


@pytest.fixture(scope="module")
def hf_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_zoo(tmp_path_factory.mktemp("hf-zoo"), tuple(HF_ZOO), HF_ZOO)


@pytest.fixture(scope="module")
def hf_server(
    tmp_path_factory: pytest.TempPathFactory, hf_zoo: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("hf-server")
    models = "".join(
        model_toml(name, hf_zoo[name], HF_ZOO[name], max_batch_size=8, max_queue_delay_ms=20.0)
        for name in HF_ZOO
    )
    # Each text model again with nothing declared: no buckets, each batch runs at its own length.
    models += "".join(
        f'[[models]]\nname = "{name}_raw"\nmodel_path = "{hf_zoo[name]}"\nmax_batch_size = 8\n'
        for name in TEXT
    )
    with running_server(server_config(workdir, models), workdir) as server:
        yield server


def assert_matches(outputs: object, expected: dict[str, np.ndarray], label: str) -> None:
    assert isinstance(outputs, dict), outputs
    assert set(outputs) == set(expected), label
    for name, want in expected.items():
        assert outputs[name].shape == want.shape, f"{label} {name}"
        np.testing.assert_allclose(outputs[name], want, **TOLERANCE, err_msg=f"{label} {name}")


def test_every_hugging_face_model_serves_over_http_and_matches_eager(
    hf_server: ServerProcess,
) -> None:
    rng = np.random.default_rng(21)
    for name, model in HF_ZOO.items():
        for rows in (1, 3):
            inputs = model.example(rng, rows, {"seq": 11})
            status, outputs = infer(hf_server.url, name, inputs)
            assert status == 200, (name, outputs)
            assert_matches(outputs, model.eager(inputs), name)


@pytest.mark.parametrize("served", ["", "_raw"])
def test_concurrent_text_requests_of_any_length_come_back_at_their_own_length(
    hf_server: ServerProcess, served: str
) -> None:
    rng = np.random.default_rng(22)
    requests = []
    for name in TEXT:
        for _ in range(8):
            rows = int(rng.integers(1, 4))
            length = int(rng.integers(1, SEQ_BUCKETS[-1] + 1))
            requests.append((name, HF_ZOO[name].example(rng, rows, {"seq": length})))
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda r: infer(hf_server.url, r[0] + served, r[1]), requests))
    for (name, inputs), (status, outputs) in zip(requests, replies, strict=True):
        assert status == 200, (name, outputs)
        # Padded or batched with longer requests, each row gives what the request alone gives.
        assert_matches(outputs, HF_ZOO[name].eager(inputs), name + served)


def test_the_model_outputs_keys_name_the_outputs_and_the_export_bounds_the_length(
    hf_server: ServerProcess,
) -> None:
    metadata = get_json(hf_server.url, "/v2/models/bert_raw")
    assert [output["name"] for output in metadata["outputs"]] == [
        "last_hidden_state",
        "pooler_output",
    ]
    assert {"input": "input_ids", "axis": 1, "min": 1, "max": MAX_SEQ} in metadata["parameters"][
        "dimension_limits"
    ]
    assert get_json(hf_server.url, "/v2/models/gpt2")["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, -1, 256]}
    ]
