"""`aegis inspect ARTIFACT` prints an artifact's signature and a `[[models]]` table: the table,
pasted as printed, passes `aegis check-config` and serves answers equal to eager. Run as the real
command."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.bert import bert, bert_example
from tests.support.command import aegis, printed_table
from tests.support.config import server_config
from tests.support.models import Mlp, onnx_mlp, script_pt
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import infer
from tests.support.zoo import ZOO, export_zoo


def table_of(artifact: Path) -> str:
    result = aegis("inspect", str(artifact))
    assert result.returncode == 0, result.stderr
    return printed_table(result.stdout)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    paths = export_zoo(root, ("encoder",))
    batch = torch.export.Dim("batch", min=1, max=16)
    seq = torch.export.Dim("seq", min=2, max=64)
    inputs = {name: torch.from_numpy(array) for name, array in bert_example(3, 7, 0).items()}
    program = torch.export.export(
        bert(), (), inputs, dynamic_shapes={name: {0: batch, 1: seq} for name in inputs}
    )
    torch.export.save(program, str(root / "bert.pt2"))
    paths["bert"] = root / "bert.pt2"
    paths["mlp"] = onnx_mlp(root / "mlp.onnx")
    return paths


def test_inspect_names_inputs_outputs_limits_and_runtimes(artifacts: dict[str, Path]) -> None:
    result = aegis("inspect", str(artifacts["bert"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "input_ids: INT64 [-1, -1]  (batch: 1 .. 16; dimension 1: 2 .. 64;" in out
    assert (
        "last_hidden_state: FP32 [-1, -1, 32]  (dimension 1 is 'seq', cut back to each "
        "request's length)" in out
    )
    assert "pooler_output: FP32 [-1, 32]" in out
    for runtime in ("torch", "tpu", "jax"):
        assert f"  {runtime}: serves it" in out
    assert "max_batch_size = 16\n[models.dims]\nseq = [16, 32, 64]" in out


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("served")
    config = workdir / "aegis.toml"
    tables = "\n".join(table_of(artifacts[name]) for name in ("encoder", "bert", "mlp"))
    config.write_text(server_config(workdir, tables))
    checked = aegis("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "3 artifact(s) checked" in checked.stdout
    with running_server(config.read_text(), workdir) as server:
        yield server


def test_the_printed_tables_pass_check_config_and_serve_equal_to_eager(
    served: ServerProcess,
) -> None:
    rng = np.random.default_rng(11)
    encoder_inputs = ZOO["encoder"].example(rng, 2, {"seq": 5})
    status, outputs = infer(served.url, "encoder", encoder_inputs)
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    for name, want in ZOO["encoder"].eager(encoder_inputs).items():
        np.testing.assert_allclose(outputs[name], want, rtol=1e-5, atol=1e-5, err_msg=name)

    bert_inputs = bert_example(2, 5, 3)
    status, outputs = infer(served.url, "bert", bert_inputs)
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    with torch.no_grad():
        want = bert()(**{name: torch.from_numpy(array) for name, array in bert_inputs.items()})
    assert outputs["last_hidden_state"].shape == (2, 5, 32)
    for name in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(
            outputs[name], getattr(want, name).numpy(), rtol=1e-5, atol=1e-5, err_msg=name
        )

    x = rng.standard_normal((3, 8)).astype(np.float32)
    status, outputs = infer(served.url, "mlp", {"x": x})
    assert status == 200, outputs
    assert isinstance(outputs, dict)
    with torch.no_grad():
        want_y = Mlp()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outputs["y"], want_y, rtol=1e-5, atol=1e-5)


def test_a_torchscript_file_lists_forwards_arguments_and_what_to_declare(tmp_path: Path) -> None:
    result = aegis("inspect", str(script_pt(Mlp(), tmp_path / "mlp.pt")))
    assert result.returncode == 0, result.stderr
    assert "forward's arguments; TorchScript records no datatypes or shapes): x" in result.stdout


def test_a_jax_file_is_read_with_jax_or_says_what_to_install(tmp_path: Path) -> None:
    """The main venv has no jax (the JAX tier has its own): there the message says what to
    install; with jax, an empty file is not an export."""
    artifact = tmp_path / "model.jax"
    artifact.write_bytes(b"")
    result = aegis("inspect", str(artifact))
    assert result.returncode == 1
    if importlib.util.find_spec("jax") is None:
        assert "model.jax: reading a .jax file needs jax" in result.stderr
    else:
        assert "model.jax: not a serialized jax.export.Exported" in result.stderr
