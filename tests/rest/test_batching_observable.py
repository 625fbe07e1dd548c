"""Under concurrent load the server batches (aegis_batch_size > 1); every caller gets its rows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.config import model_table, server_config
from tests.support.http import get_text
from tests.support.models import Mlp
from tests.support.server import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("batching")
    config = server_config(
        workdir,
        model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 16\nmax_queue_delay_ms = 20"),
        "",
    )
    with running_server(config, workdir) as server:
        yield server


def call(address: str, rows: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(address, network_timeout=30)
    try:
        given = httpclient.InferInput("x", list(rows.shape), "FP32")
        given.set_data_from_numpy(rows)
        return cast(np.ndarray, client.infer("mlp", [given]).as_numpy("output__0"))
    finally:
        client.close()


def reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast(np.ndarray, Mlp()(torch.from_numpy(x)).numpy())


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=16),
    seed=st.integers(0, 2**16),
)
def test_concurrent_callers_each_get_their_own_rows(
    server: ServerProcess, sizes: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    requests = [rng.standard_normal((size, 8)).astype(np.float32) for size in sizes]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda rows: call(server.address, rows), requests))
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer, reference(rows), rtol=1e-5, atol=1e-6)


def batch_histogram(metrics_text: str) -> dict[str, float]:
    pattern = re.compile(r'aegis_batch_size_bucket\{le="([^"]+)",model="mlp",version="1"\} (\S+)')
    return {le: float(count) for le, count in pattern.findall(metrics_text)}


def test_batch_size_histogram_shows_batches_larger_than_one(server: ServerProcess) -> None:
    rows = [np.full((1, 8), i, dtype=np.float32) for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda r: call(server.address, r), rows))
    text = get_text(server, "/metrics", timeout_s=10)
    histogram = batch_histogram(text)
    assert histogram["+Inf"] > histogram["1.0"], histogram
    for name in (
        "aegis_inference_requests_total",
        "aegis_inference_request_duration_seconds_bucket",
        "aegis_queue_duration_seconds_bucket",
        "aegis_queue_depth",
        "aegis_model_ready",
        "aegis_cpu_fallback_requests_total",
        "aegis_xla_compilations_total",
        "aegis_xla_compile_seconds",
        "aegis_artifact_sync_bytes_total",
        "aegis_artifact_sync_seconds",
    ):
        assert name in text, name
    assert (
        'aegis_inference_requests_total{code="200",model="mlp",protocol="http",version="1"}' in text
    )
