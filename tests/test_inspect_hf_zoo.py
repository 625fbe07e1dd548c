"""`aegis inspect` on Hugging Face models exported as they come (tests/support/hf_zoo.py): each
report names the model's own outputs and lists every runtime of a `.pt2` as serving it, and the
printed `[[models]]` tables, pasted together as printed, pass `aegis check-config` and serve
answers equal to eager at each request's own length. Run as the real command."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.support.command import aegis, printed_table
from tests.support.config import server_config
from tests.support.hf_zoo import HF_ZOO
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import infer
from tests.support.zoo import Tolerance, export_zoo

TOLERANCE: Tolerance = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    artifacts = export_zoo(tmp_path_factory.mktemp("hf-inspect"), tuple(HF_ZOO), HF_ZOO)
    printed = {}
    for name, path in artifacts.items():
        result = aegis("inspect", str(path))
        assert result.returncode == 0, result.stderr
        printed[name] = result.stdout
    return printed


def test_each_report_names_the_model_outputs_and_every_runtime_serves_it(
    reports: dict[str, str],
) -> None:
    for name, report in reports.items():
        for output in HF_ZOO[name].outputs:
            assert f"  {output.name}: FP32 [" in report, (name, report)
        for runtime in ("torch", "tpu", "jax"):
            assert f"  {runtime}: serves it" in report, (name, runtime, report)
    assert (
        "last_hidden_state: FP32 [-1, -1, 32]  (dimension 1 is 'seq', cut back to each "
        "request's length)" in reports["bert"]
    )


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, reports: dict[str, str]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("hf-served")
    config = workdir / "aegis.toml"
    tables = "\n".join(printed_table(report) for report in reports.values())
    config.write_text(server_config(workdir, tables))
    checked = aegis("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert f"{len(HF_ZOO)} artifact(s) checked" in checked.stdout
    with running_server(config.read_text(), workdir) as server:
        yield server


def test_the_printed_tables_pass_check_config_and_serve_equal_to_eager(
    served: ServerProcess,
) -> None:
    rng = np.random.default_rng(41)
    for name, model in HF_ZOO.items():
        for rows, length in ((1, 5), (3, 19)):
            inputs = model.example(rng, rows, {"seq": length})
            status, outputs = infer(served.url, name, inputs)
            assert status == 200, (name, outputs)
            assert isinstance(outputs, dict)
            for output, want in model.eager(inputs).items():
                assert outputs[output].shape == want.shape, (name, output)
                np.testing.assert_allclose(
                    outputs[output], want, **TOLERANCE, err_msg=f"{name} {output}"
                )
