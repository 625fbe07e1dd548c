"""GPT-2 from `transformers` (random init, a small config), exported with torch.export as users
export a text model (dynamic batch and sequence length), serves on `runtime = "jax"` over HTTP:
every batch size and length up to the largest buckets matches eager torch, and serving compiles
nothing after warmup.

torchax could not convert it before: the decomposition pass re-traces the program with torch's
stride rules, under which a view the export recorded (the attention output's) is illegal."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from tests.jax_tier.jax_serving import CPU, config_toml
from tests.support.metrics import scrape
from tests.support.server import ServerProcess, running_server
from tests.support.v2 import infer

if TYPE_CHECKING:
    from tests.support.zoo import Tolerance

pytestmark = pytest.mark.jax

BATCHES = (1, 2, 4)
LENGTHS = (4, 8, 16)
WIDTH = 32
VOCAB = 100
TOLERANCE: Tolerance = {"rtol": 1e-4, "atol": 1e-5}


class LastHidden(torch.nn.Module):
    """GPT2Model returning its last hidden state (what the export guides do: tensors out)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        torch.manual_seed(5)
        config = GPT2Config(
            n_layer=2, n_head=2, n_embd=WIDTH, vocab_size=VOCAB, n_positions=64, use_cache=False
        )
        self.model = GPT2Model(config).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return hidden


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    module = LastHidden().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=2, max=64)
    example = (torch.randint(0, VOCAB, (2, 8)), torch.ones(2, 8, dtype=torch.int64))
    program = torch.export.export(
        module, example, dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq})
    )
    path = tmp_path_factory.mktemp("gpt2") / "gpt2.pt2"
    torch.export.save(program, str(path))
    return module, path


def gpt2_toml(path: Path) -> str:
    tensors = [
        ("inputs", "input_ids", "INT64", [-1, "seq"]),
        ("inputs", "attention_mask", "INT64", [-1, "seq"]),
        ("outputs", "last_hidden_state", "FP32", [-1, "seq", WIDTH]),
    ]
    lines = [
        "[[models]]",
        'name = "gpt2"',
        f'model_path = "{path}"',
        'runtime = "jax"',
        'device = "cpu"',
        f"max_batch_size = {BATCHES[-1]}",
        f"batch_buckets = {list(BATCHES)}",
        "max_queue_delay_ms = 20.0",
        "[models.dims]",
        f"seq = {list(LENGTHS)}",
    ]
    for kind, name, datatype, shape in tensors:
        lines += [f"[[models.{kind}]]", f'name = "{name}"', f'datatype = "{datatype}"']
        lines += [f"shape = {shape}".replace("'", '"'), "pad_value = 0"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gpt2_server(
    tmp_path_factory: pytest.TempPathFactory, gpt2: tuple[torch.nn.Module, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("gpt2-jax")
    config = config_toml(workdir, gpt2_toml(gpt2[1]))
    with running_server(config, workdir, ready_timeout_s=600) as server:
        yield server


def test_gpt2_serves_on_jax_matches_eager_and_compiles_nothing_after_warmup(
    gpt2_server: ServerProcess, gpt2: tuple[torch.nn.Module, Path]
) -> None:
    module, _ = gpt2
    rng = np.random.default_rng(3)
    requests = []
    for rows in range(1, BATCHES[-1] + 1):
        for length in range(2, LENGTHS[-1] + 1, 3):
            ids = rng.integers(0, VOCAB, (rows, length)).astype(np.int64)
            mask = np.ones((rows, length), dtype=np.int64)
            mask[0, length // 2 :] = 0  # one row padded by its own mask, as a tokenizer does
            requests.append({"input_ids": ids, "attention_mask": mask})
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda inputs: infer(gpt2_server.url, "gpt2", inputs), requests))
    for inputs, (status, outputs) in zip(requests, replies, strict=True):
        assert status == 200, outputs
        assert isinstance(outputs, dict)
        with torch.no_grad():
            want = module(*(torch.from_numpy(inputs[n]) for n in ("input_ids", "attention_mask")))
        np.testing.assert_allclose(outputs["last_hidden_state"], want.numpy(), **TOLERANCE)
    value = scrape(gpt2_server)
    labels = {"model": "gpt2", "version": "1", "device": CPU}
    assert value("aegis_xla_compilations_total", phase="warmup", **labels) >= len(BATCHES) * len(
        LENGTHS
    )
    assert value("aegis_xla_compilations_total", phase="serving", **labels) == 0
