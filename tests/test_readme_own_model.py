"""The README's "Serve your own model" runs as written: its export snippets, its `aegis inspect`,
its configs for every runtime through `aegis check-config`, and its `torch` config served, equal
to the exported programs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.runtimes.exported import load_program
from tests.support.config import server_config
from tests.support.server import running_server
from tests.support.v2 import infer

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Serve your own model\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.DOTALL)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("own-model")
    snippets = blocks("python")
    assert len(snippets) == 2
    for snippet in snippets:
        result = run([sys.executable, "-c", snippet], folder)
        assert result.returncode == 0, result.stderr
    assert (folder / "vision.pt2").is_file() and (folder / "text.pt2").is_file()
    return folder


def test_the_readmes_inspect_command_prints_what_it_says(exported: Path) -> None:
    (console,) = blocks("console")
    command = console.strip().removeprefix("$ ").split()
    assert command[:2] == ["aegis", "inspect"]
    result = run([sys.executable, "-m", "appliance", *command[1:]], exported)
    assert result.returncode == 0, result.stderr
    assert "input_ids: INT64 [-1, -1]  (batch: 1 .. 32; dimension 1: 2 .. 128;" in result.stdout
    assert (
        "last_hidden_state: FP32 [-1, -1, 32]  (dimension 1 is 'seq', cut back to each "
        "request's length)" in result.stdout
    )


def test_the_readmes_configs_pass_check_config_and_the_torch_one_serves(
    exported: Path,
) -> None:
    configs = blocks("toml")
    assert len(configs) == 2
    for index, models in enumerate(configs):
        path = exported / f"aegis{index}.toml"
        path.write_text(server_config(exported / f"work{index}", models))
        result = run([sys.executable, "-m", "appliance", "check-config", str(path)], exported)
        assert result.returncode == 0, result.stderr
        assert "2 artifact(s) checked" in result.stdout, result.stdout

    # Served from the folder the config names its artifacts relative to.
    with running_server((exported / "aegis0.toml").read_text(), exported) as server:
        rng = np.random.default_rng(12)
        text_inputs = {
            "input_ids": rng.integers(1, 1000, (2, 5)),
            "attention_mask": np.ones((2, 5), dtype=np.int64),
        }
        image = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
        for name, inputs in (("text", text_inputs), ("vision", {"image": image})):
            status, outputs = infer(server.url, name, inputs)
            assert status == 200, outputs
            assert isinstance(outputs, dict)
            # The server's loader: text.pt2's ModelOutput comes back as a dict of its keys.
            module = load_program(exported / f"{name}.pt2").module()
            with torch.no_grad():
                tensors = {key: torch.from_numpy(value) for key, value in inputs.items()}
                # The text model was exported with keyword inputs, the vision one positionally.
                want = module(**tensors) if name == "text" else module(*tensors.values())
            leaves = dict(want) if name == "text" else {"output__0": want}
            for output, tensor in leaves.items():
                assert outputs[output].shape == tuple(tensor.shape), output
                np.testing.assert_allclose(
                    outputs[output], tensor.numpy(), rtol=1e-5, atol=1e-5, err_msg=output
                )
