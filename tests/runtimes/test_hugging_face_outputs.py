"""A Hugging Face model exported as it comes (returning its `ModelOutput` class) serves from a
process that cannot import `transformers`: its outputs are named by the output's keys. A file that
still cannot load says why on the error line itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.bert import bert, bert_example
from tests.support.config import model_table, server_config
from tests.support.server import ServerProcess, run_until_exit, running_server
from tests.support.v2 import get_json, infer

SEQ = 7


@pytest.fixture(scope="module")
def bert_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    batch = torch.export.Dim("batch", min=1, max=16)
    seq = torch.export.Dim("seq", min=2, max=64)
    inputs = {name: torch.from_numpy(array) for name, array in bert_example(3, SEQ, 0).items()}
    program = torch.export.export(
        bert(),
        (),
        inputs,
        dynamic_shapes={name: {0: batch, 1: seq} for name in inputs},
    )
    assert program.call_spec.out_spec.type.__module__.startswith("transformers")
    path = tmp_path_factory.mktemp("bert") / "bert.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bert_pt2: Path) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("server")
    # The server process finds a `transformers` that refuses to import, before the real one.
    blocker = workdir / "no-transformers" / "transformers"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("the server imported transformers")\n')
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", ""), os.getcwd()])
    models = model_table("bert", bert_pt2, "max_batch_size = 4")
    with running_server(server_config(workdir, models), workdir, {"PYTHONPATH": path}) as process:
        yield process


def test_a_hugging_face_model_output_is_served_by_its_keys_without_transformers(
    server: ServerProcess,
) -> None:
    metadata = get_json(server.url, "/v2/models/bert")
    assert [output["name"] for output in metadata["outputs"]] == [
        "last_hidden_state",
        "pooler_output",
    ]
    inputs = bert_example(2, 5, 1)
    status, outputs = infer(server.url, "bert", inputs)
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    with torch.no_grad():
        want = bert()(**{name: torch.from_numpy(array) for name, array in inputs.items()})
    for name in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(
            outputs[name], getattr(want, name).numpy(), rtol=1e-5, atol=1e-5, err_msg=name
        )


CUSTOM_OP_EXPORT = """
import sys
import torch

@torch.library.custom_op("aegistest::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2

@twice.register_fake
def _(x):
    return torch.empty_like(x)

class Twice(torch.nn.Module):
    def forward(self, x):
        return twice(x)

batch = torch.export.Dim("batch", min=1, max=8)
program = torch.export.export(Twice(), (torch.ones(3, 4),), dynamic_shapes=({0: batch},))
torch.export.save(program, sys.argv[1])
"""


def test_a_file_that_still_cannot_load_names_its_cause_on_the_error_line(tmp_path: Path) -> None:
    """A custom op the serving process does not register: torch logs the cause apart and raises
    "check the warnings above"; the start failure carries the cause itself."""
    artifact = tmp_path / "custom_op.pt2"
    subprocess.run([sys.executable, "-c", CUSTOM_OP_EXPORT, str(artifact)], check=True, timeout=300)
    code, log = run_until_exit(tmp_path, model_table("custom", artifact))
    assert code == 1
    failure = next(line for line in log.splitlines() if "start_failed" in line)
    assert (
        "custom_op.pt2: not a loadable torch.export program: SerializeError: We failed to "
        "resolve torch.ops.aegistest.twice.default to an operator" in failure
    ), failure
    assert "check the warnings above" not in failure
