"""The real server driven by tritonclient, a third-party Open Inference Protocol client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.config import model_table, server_config, tensor_table
from tests.support.models import Mlp
from tests.support.server import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    mlp_pt = artifacts["mlp.pt"]
    models = (
        model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 16")
        + model_table("mixed", artifacts["mixed.pt2"], "max_batch_size = 8")
        + model_table("scripted", mlp_pt, "max_batch_size = 8")
        + tensor_table("inputs", "input__0", "FP32", [-1, 8])
        + tensor_table("outputs", "output__0", "FP32", [-1, 3])
        + model_table("onnx_mlp", artifacts["mlp.onnx"], 'runtime = "onnx"\nmax_batch_size = 8')
    )
    workdir = tmp_path_factory.mktemp("triton")
    with running_server(server_config(workdir, models), workdir) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.address, network_timeout=30)
    yield client
    client.close()


def reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast(np.ndarray, Mlp()(torch.from_numpy(x)).numpy())


def test_server_metadata_and_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "aegis"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")


def test_model_metadata_and_config_come_from_the_artifact(
    client: httpclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("mlp")
    assert metadata["platform"] == "pytorch_export"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert metadata["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [8]}]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("model", ["mlp", "scripted", "onnx_mlp"])
def test_outputs_equal_the_in_process_model(
    client: httpclient.InferenceServerClient, model: str, binary: bool
) -> None:
    metadata = client.get_model_metadata(model)
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    given = httpclient.InferInput(metadata["inputs"][0]["name"], list(x.shape), "FP32")
    given.set_data_from_numpy(x, binary_data=binary)
    wanted = httpclient.InferRequestedOutput(metadata["outputs"][0]["name"], binary_data=binary)
    result = client.infer(model, [given], outputs=[wanted])
    np.testing.assert_allclose(result.as_numpy(wanted.name()), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_int64_and_bool_round_trip(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    a = np.array([[1.5, -2, 0, 4]] * 3, dtype=np.float32)
    b = np.array([[1, 2, 3], [4, 5, 6], [-7, 8, 2**40]], dtype=np.int64)
    c = np.array([[True, False]] * 3)
    inputs = []
    for name, array, datatype in (("a", a, "FP32"), ("b", b, "INT64"), ("c", c, "BOOL")):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput(f"output__{i}", binary_data=binary) for i in range(3)
    ]
    result = client.infer("mixed", inputs, outputs=outputs, request_id="rt-1")
    assert result.get_response()["id"] == "rt-1"
    np.testing.assert_array_equal(result.as_numpy("output__0"), a * 2)
    np.testing.assert_array_equal(result.as_numpy("output__1"), b + 1)
    np.testing.assert_array_equal(result.as_numpy("output__2"), ~c)


def test_unknown_model_and_version_are_404(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no version '9'"):
        client.get_model_metadata("mlp", "9")
