"""Vertex AI prediction: the server started as Vertex starts a custom container (the AIP_*
variables), its models in a fake-gcs-server bucket as AIP_STORAGE_URI."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.config import server_config
from tests.support.gcs import admin_client, emulator
from tests.support.http import call, free_port
from tests.support.models import Mlp, onnx_strings
from tests.support.server import ServerProcess, running_server, start_server

BUCKET = "vertex-models"
HEALTH = "/health/aegis"
PREDICT = "/v1/endpoints/e/deployedModels/m:predict"


@pytest.fixture(scope="module")
def gcs(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bucket: `single/` holds one artifact; `several/` an aegis.toml and its artifacts."""
    with emulator() as url:
        bucket = admin_client(url).create_bucket(BUCKET)
        bucket.blob("single/mlp.pt2").upload_from_filename(str(artifacts["mlp.pt2"]))
        cache = tmp_path_factory.mktemp("several-cache")
        strings = onnx_strings(tmp_path_factory.mktemp("strings") / "strings.onnx")
        bucket.blob("several/mixed.pt2").upload_from_filename(str(artifacts["mixed.pt2"]))
        bucket.blob("several/strings.onnx").upload_from_filename(str(strings))
        for name, chosen in (("several", "mixed"), ("strings", "strings"), ("ambiguous", "")):
            config = (
                f'[server]\nshutdown_grace_s = 5\nvertex_model = "{chosen}"\n'
                f'[storage]\ncache_dir = "{cache / name}"\n'
                '[[models]]\nname = "mixed"\nversion = "1"\nmodel_path = "mixed.pt2"\n'
                '[[models]]\nname = "strings"\nversion = "1"\nmodel_path = "strings.onnx"\n'
                'runtime = "onnx"\n'
            )
            bucket.blob(f"{name}/aegis.toml").upload_from_string(config)
        for folder in ("strings", "ambiguous"):
            for blob in ("mixed.pt2", "strings.onnx"):
                bucket.copy_blob(bucket.blob(f"several/{blob}"), bucket, f"{folder}/{blob}")
        yield url


def vertex_env(url: str, folder: str, port: int) -> dict[str, str]:
    return {
        "AIP_MODE": "PREDICTION",
        "AIP_HTTP_PORT": str(port),
        "AIP_HEALTH_ROUTE": HEALTH,
        "AIP_PREDICT_ROUTE": PREDICT,
        "AIP_STORAGE_URI": f"gs://{BUCKET}/{folder}",
        "STORAGE_EMULATOR_HOST": url,
    }


@contextlib.contextmanager
def vertex_server(gcs: str, folder: str, workdir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    text = server_config(workdir, "")  # the container's own settings: a private cache
    with running_server(text, workdir, vertex_env(gcs, folder, port), port=port) as server:
        yield server


def predict(server: ServerProcess, body: object) -> tuple[int, dict[str, Any]]:
    reply = call(server, "POST", PREDICT, json.dumps(body).encode(), timeout_s=30)
    return reply.status, json.loads(reply.body)


def test_health_is_503_until_warm_then_200_and_predict_serves_one_input(
    gcs: str, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, ""))
    server = start_server(
        config, tmp_path / "server.log", vertex_env(gcs, "single", port), port=port
    )
    try:
        seen: list[int] = []
        end = time.monotonic() + 120
        while not seen or seen[-1] != 200:
            assert time.monotonic() < end, server.log()
            assert server.process.poll() is None, server.log()
            with contextlib.suppress(OSError):
                seen.append(server.status(HEALTH))
            time.sleep(0.05)
        assert seen[0] == 503 and set(seen) == {503, 200}
        x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
        status, body = predict(server, {"instances": x.tolist()})
        assert status == 200, body
        with torch.no_grad():
            want = Mlp()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.array(body["predictions"]), want, rtol=1e-5)
        # The /v2 routes stay, on the same model.
        assert server.status("/v2/models/mlp/ready") == 200
        status, body = predict(server, {"instances": [[1.0] * 8, [1.0] * 7]})
        assert status == 400
        assert body["error"].startswith("instance 1: input 'x': has shape [7]")
        # Each call leaves an access line, like an infer call.
        lines = [
            json.loads(line)
            for line in server.wait_for_log('"status":400').splitlines()
            if '"event":"predict"' in line
        ]
        assert [(line["status"], line["protocol"]) for line in lines] == [
            (200, "http"),
            (400, "http"),
        ]
    finally:
        server.stop()


def test_predict_serves_a_multi_input_model_chosen_by_the_config(gcs: str, tmp_path: Path) -> None:
    with vertex_server(gcs, "several", tmp_path) as server:
        instances = [
            {"a": [1.0, 2.0, 3.0, 4.0], "b": [1, 2, 3], "c": [True, False]},
            {"a": [0.5, 0.0, -1.0, 2.0], "b": [-5, 0, 9], "c": [False, False]},
        ]
        status, body = predict(server, {"instances": instances, "parameters": {}})
        assert status == 200, body
        first, second = body["predictions"]
        assert sorted(first) == ["output__0", "output__1", "output__2"]
        assert first["output__0"] == [2.0, 4.0, 6.0, 8.0]
        assert second["output__1"] == [-4, 1, 10]
        assert second["output__2"] == [True, True]
        bad = [instances[0], {"a": [1.0, 2.0, 3.0, 4.0], "b": ["x", 2, 3], "c": [True, False]}]
        status, body = predict(server, {"instances": bad})
        assert status == 400
        assert body == {"error": "instance 1: input 'b': INT64 values are integers"}
        status, body = predict(server, {"instances": [{"a": [1.0] * 4, "c": [True, True]}]})
        assert (status, body) == (400, {"error": "instance 0: input 'b' is missing"})


def test_predict_takes_bytes_as_strings_or_b64(gcs: str, tmp_path: Path) -> None:
    with vertex_server(gcs, "strings", tmp_path) as server:
        # ONNX string tensors hold UTF-8 text: what comes back as b64 is what is not UTF-8.
        raw = "b\u00efnaire\n".encode()
        instances = [["hello"], [{"b64": base64.b64encode(raw).decode()}], ["\u00e9t\u00e9"]]
        status, body = predict(server, {"instances": instances})
        assert status == 200, body
        assert body["predictions"] == [["hello"], [raw.decode()], ["\u00e9t\u00e9"]]
        status, body = predict(server, {"instances": [["ok"], [{"b64": "not base64!"}]]})
        assert (status, body) == (
            400,
            {"error": "instance 1: input 's': 'b64' is not valid base64"},
        )


def test_several_models_without_a_choice_refuse_to_start(gcs: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, ""))
    env = vertex_env(gcs, "ambiguous", port)
    server = start_server(config, tmp_path / "server.log", env, port=port)
    try:
        assert server.process.wait(120) == 1
        assert "set server.vertex_model to the one that answers the predict route" in server.log()
    finally:
        server.stop()
