"""A model with a named dimension is described like any other: /openapi.json, metadata, config."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import ServerFactory
from tests.support.config import model_table, tensor_table
from tests.support.http import get_json
from tests.support.models import script_pt


class RowSum(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


def test_a_named_dimension_is_any_size_in_every_description(
    serve: ServerFactory, tmp_path: Path
) -> None:
    artifact = script_pt(RowSum(), tmp_path / "rowsum.pt")
    server = serve(
        model_table("rowsum", artifact, "max_batch_size = 2\n[models.dims]\nseq = [4, 8]")
        + '[[models.inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, "seq"]\n'
        + tensor_table("outputs", "y", "FP32", [-1, 1])
    )
    document = get_json(server, "/openapi.json")
    [component] = [
        schema
        for name, schema in document["components"]["schemas"].items()
        if name.startswith("InferenceRequest") and name != "InferenceRequest"
    ]
    first = component["properties"]["inputs"]["anyOf"][0]["prefixItems"][0]
    assert first["properties"]["shape"]["prefixItems"] == [
        {"const": 1},
        {"type": "integer", "minimum": 0},
    ]
    metadata = get_json(server, "/v2/models/rowsum")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    config = get_json(server, "/v2/models/rowsum/config")
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1]}]
