"""Every request parameter is implemented or refused by name: Triton's classification extension
(top-K with labels from labels.txt beside the artifact) and 400s for the rest, against the real
server with tritonclient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.models import export_pt2
from tests.support.server import ServerProcess, running_server

LABELS = [f"class-{index}" for index in range(10)]


class Scores(torch.nn.Module):
    """Ten class scores per row, none tied."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear(x))


class Bf16Scores(Scores):
    """The same scores as bfloat16, which travel as their bit patterns (negatives' sign bit set)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(torch.bfloat16)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("scores")
    torch.manual_seed(11)
    export_pt2(Scores(), (torch.zeros(2, 8),), folder / "scores.pt2")
    bf16 = tmp_path_factory.mktemp("bf16") / "bf16.pt2"
    export_pt2(Bf16Scores(), (torch.zeros(2, 8),), bf16)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    # mlp.pt2 stands alone, no labels beside it; its ReLU gives tied zero scores.
    models = (
        model_table("scores", f"{folder}/", "max_batch_size = 8")
        + model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 8")
        + model_table("bf16", bf16, "max_batch_size = 8")
    )
    workdir = tmp_path_factory.mktemp("parameters")
    with running_server(server_config(workdir, models), workdir) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.address, network_timeout=30)
    yield client
    client.close()


def rows(count: int) -> httpclient.InferInput:
    x = np.random.default_rng(count).standard_normal((count, 8)).astype(np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def parse(element: bytes | str) -> tuple[float, int, str | None]:
    """One classification element; tritonclient reads JSON BYTES as str, binary ones as bytes."""
    text = element.decode() if isinstance(element, bytes) else element
    value, index, *label = text.split(":")
    return float(value), int(index), label[0] if label else None


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("model", "labels"), [("scores", LABELS), ("mlp", None), ("bf16", None)])
def test_classification_returns_the_top_classes_of_the_models_own_output(
    client: httpclient.InferenceServerClient, model: str, labels: list[str] | None, binary: bool
) -> None:
    tensor = rows(4)
    output = client.get_model_metadata(model)["outputs"][0]["name"]
    raw = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput(output)])
    scores = raw.as_numpy(output)
    result = client.infer(
        model,
        [tensor],
        outputs=[httpclient.InferRequestedOutput(output, binary_data=binary, class_count=3)],
    )
    described = result.get_output(output)
    assert described["datatype"] == "BYTES" and described["shape"] == [4, 3]
    top = result.as_numpy(output)
    # Highest first; equal scores (the ReLU's zeros) by lower index first, as a stable sort does.
    expected = np.argsort(-scores, axis=-1, kind="stable")[:, :3]
    parsed = [[parse(element) for element in row] for row in top]
    assert [[index for _, index, _ in row] for row in parsed] == expected.tolist()
    np.testing.assert_allclose(
        [[value for value, _, _ in row] for row in parsed],
        np.take_along_axis(scores, expected, axis=-1),
        rtol=1e-6,
    )
    wanted_labels = [[labels[i] if labels else None for i in row] for row in expected.tolist()]
    assert [[label for _, _, label in row] for row in parsed] == wanted_labels


def test_the_server_says_it_speaks_the_classification_extension(
    client: httpclient.InferenceServerClient,
) -> None:
    assert "classification" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"parameters": {"colour": "blue"}}, "request parameter 'colour' is not supported"),
        ({"priority": 5}, "request parameter 'priority' is 5"),
        ({"sequence_id": 7}, "request parameter 'sequence_id' is not supported"),
    ],
)
def test_request_parameters_the_server_does_not_implement_are_refused_by_name(
    client: httpclient.InferenceServerClient, options: dict[str, object], named: str
) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.infer("scores", [rows(1)], **options)
    # tritonclient's HTTP errors carry no status: the raw requests below check the 400.
    assert named in refused.value.message()


def infer_json(server: ServerProcess, body: dict[str, object]) -> tuple[int, dict[str, Any]]:
    reply = call(server, "POST", "/v2/models/scores/infer", json.dumps(body).encode())
    return reply.status, json.loads(reply.body)


X = {"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}


def classified(count: object) -> dict[str, object]:
    return {
        "inputs": [X],
        "outputs": [{"name": "output__0", "parameters": {"classification": count}}],
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"inputs": [{**X, "parameters": {"content_type": "np"}}]}, "input 'x': parameter "),
        (
            {"inputs": [X], "parameters": {"triton_enable_empty_final_response": True}},
            "request parameter 'triton_enable_empty_final_response' is not supported",
        ),
        (
            {"inputs": [X], "outputs": [{"name": "output__0", "parameters": {"top": 3}}]},
            "output 'output__0': parameter 'top' is not supported",
        ),
        (
            {
                "inputs": [X],
                "outputs": [{"name": "output__0", "parameters": {"classification": 0}}],
            },
            "'classification' must be a positive integer",
        ),
        (
            {
                "inputs": [X],
                "outputs": [{"name": "output__0", "parameters": {"classification": 11}}],
            },
            "asks for 11 classes, the output has 10",
        ),
    ],
)
def test_input_and_output_parameters_are_implemented_or_refused_by_name(
    server: ServerProcess, body: dict[str, object], named: str
) -> None:
    status, reply = infer_json(server, body)
    assert status == 400
    assert named in reply["error"]


def test_priority_zero_is_the_default_and_is_served(server: ServerProcess) -> None:
    status, reply = infer_json(server, {"inputs": [X], "parameters": {"priority": 0}})
    assert status == 200, reply
    assert reply["outputs"][0]["shape"] == [1, 10]
